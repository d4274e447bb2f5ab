"""RLHF on the shared model: the direction of each method's update on a reward that favours one
token, the KL leash, a reward model on a separable preference, bad input refused before
training, and a whole matrix (reward cell, RLOO, PPO, DPO, MLE's control) with its report."""

from __future__ import annotations

import copy
import re
import sqlite3
from pathlib import Path

import pytest
import torch
from tiny import write_tiny_corpus

from beyondmle.api import (
    Optimizers,
    PreferencePairs,
    Resources,
    SpecialTokens,
    TrainingState,
    register_reward_function,
)
from beyondmle.api import get_objective as objective_class
from beyondmle.model import GPT, ModelConfig
from beyondmle.reports import build_report
from beyondmle.reward import RewardModel, pairwise_accuracy
from beyondmle.rl import bradley_terry_loss, continuation_log_probs, kl_k3
from beyondmle.spec import SpecError, parse_spec

CONFIG = ModelConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
SPECIAL = SpecialTokens(pad=0, eos=1, mask=2, sep=3)
FAVOURED = 7


@register_reward_function("short_words")
def short_words(text: str) -> float:
    """A gold reward that varies on the test corpus: the share of words of two characters."""
    words = text.split()
    return sum(len(w) == 2 for w in words) / max(1, len(words))


def make(name: str, **settings):
    cls = objective_class(name)
    return cls(cls.Settings(**settings), GPT(CONFIG).info, SPECIAL)


def favoured_reward(prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
    """How many continuation tokens are the favoured one."""
    return (continuations == FAVOURED).float().sum(dim=1)


def resources_for(model: GPT, reward=favoured_reward) -> Resources:
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    torch.manual_seed(1)
    reward_model = RewardModel(copy.deepcopy(model)).eval().requires_grad_(False)
    return Resources(reference=reference, reward=reward, reward_model=reward_model)


def optimizers_for(opts: dict[str, torch.optim.Optimizer]) -> Optimizers:
    def step(name: str, loss: torch.Tensor) -> None:
        opts[name].zero_grad()
        loss.backward()
        opts[name].step()

    return Optimizers(step)


@torch.no_grad()
def favoured_probability(model: GPT, prompts: torch.Tensor) -> float:
    logits = model.logits(model.hidden_states(prompts))[:, -1]
    return float(torch.softmax(logits, dim=-1)[:, FAVOURED].mean())


def batch(rows: int = 16) -> torch.Tensor:
    return torch.randint(
        4, 12, (rows, CONFIG.block_size + 1), generator=torch.Generator().manual_seed(0)
    )


def train_policy(name: str, steps: int = 25, lr: float = 3e-3, **settings) -> tuple[GPT, GPT]:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = make(name, prompt_tokens=4, rollout_tokens=6, **settings)
    resources = resources_for(model)
    obj.attach(resources)
    obj.generator.manual_seed(0)
    opts = {"model": torch.optim.Adam(model.parameters(), lr=lr)}
    opts.update(obj.configure_optimizers(lr, 0.0))
    for step in range(steps):
        obj.manual_step(model, batch(), TrainingState(step, step / steps), optimizers_for(opts))
    return model, resources.reference


@pytest.mark.parametrize("name", ["rloo", "ppo"])
def test_a_reward_for_one_token_raises_its_probability(name: str) -> None:
    model, reference = train_policy(name, kl_coef=0.0)
    prompts = batch()[:, :4]
    before, after = favoured_probability(reference, prompts), favoured_probability(model, prompts)
    assert after > before + 0.15, (before, after)


@torch.no_grad()
def sampled_kl(model: GPT, reference: GPT) -> float:
    from beyondmle.rl import rollout

    prompts = batch(64)[:, :4]
    sample = rollout(model, prompts, 6, torch.Generator().manual_seed(5))
    log_p = continuation_log_probs(model, prompts, sample)
    log_q = continuation_log_probs(reference, prompts, sample)
    return float(kl_k3(log_p, log_q).sum(dim=1).mean())


@pytest.mark.parametrize("name", ["rloo", "ppo"])
def test_a_large_kl_coefficient_keeps_the_policy_near_the_reference(name: str) -> None:
    free, reference = train_policy(name, kl_coef=0.0)
    leashed, _ = train_policy(name, kl_coef=2.0)
    free_kl, leashed_kl = sampled_kl(free, reference), sampled_kl(leashed, reference)
    assert leashed_kl < 0.25 * free_kl, (leashed_kl, free_kl)
    assert leashed_kl < 0.1


def separable_pairs(n: int, seed: int) -> PreferencePairs:
    """Chosen continuations hold token 5 somewhere; rejected ones never do."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(6, 12, (n, 4), generator=g)
    chosen = torch.randint(6, 12, (n, 6), generator=g)
    chosen[torch.arange(n), torch.randint(0, 6, (n,), generator=g)] = 5
    rejected = torch.randint(6, 12, (n, 6), generator=g)
    return PreferencePairs(prompts, chosen, rejected)


def test_a_reward_model_learns_a_separable_preference() -> None:
    torch.manual_seed(0)
    model = RewardModel(GPT(CONFIG))
    train, heldout = separable_pairs(512, 0), separable_pairs(200, 1)
    assert pairwise_accuracy(model, heldout) < 0.8  # not separable before training
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, 512, 32):
            loss = bradley_terry_loss(
                model.score(train.prompts[i : i + 32], train.chosen[i : i + 32]),
                model.score(train.prompts[i : i + 32], train.rejected[i : i + 32]),
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert pairwise_accuracy(model, heldout) > 0.95


def test_dpo_moves_the_policy_towards_the_chosen_side() -> None:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    obj = make("dpo", beta=0.5)
    resources = resources_for(model)
    resources.pairs = separable_pairs(256, 0)
    obj.attach(resources)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for step in range(40):
        out = obj.loss(model, batch(), TrainingState(step, step / 40))
        first = first if first is not None else float(out.loss.detach())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    heldout = separable_pairs(128, 1)
    with torch.no_grad():
        pol_w, pol_l = obj.sequence_log_probs(
            model, heldout.prompts, heldout.chosen, heldout.rejected
        )
        ref_w, ref_l = obj.sequence_log_probs(
            resources.reference, heldout.prompts, heldout.chosen, heldout.rejected
        )
    assert float(out.loss.detach()) < first
    assert float(((pol_w - ref_w) - (pol_l - ref_l)).mean()) > 1.0  # chosen gained on rejected


# bad input, refused before anything trains

SPEC = """
[benchmark]
name = "rlhf"
seeds = [0]
[[corpus]]
name = "text"
paths = ["{corpus}"]
vocab_size = 300
valid_fraction = 0.1
test_fraction = 0.1
cache_dir = "{cache}"
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
dropout = 0.0
{regime}
[training]
budget_tokens = {budget}
batch_size = 4
precision = "32-true"
accelerator = "cpu"
val_every_steps = 2
checkpoint_every_steps = 4
{objectives}
{preferences}
[decoding]
greedy = true
temperature = [1.0]
[evaluation]
num_samples = 16
prompt_tokens = 4
continuation_tokens = 8
self_bleu_samples = 16
batch_size = 16
bootstrap_replicates = 20
metrics = {metrics}
"""

FINETUNE = """
[regime]
kind = "finetune"
[base]
budget_tokens = 2048
batch_size = 4
precision = "32-true"
accelerator = "cpu"
"""

PREFERENCES = """
[[preferences]]
source = "reward_function"
function = "short_words"
pairs = 64
heldout_pairs = 16
reward_batch_size = 16
reward_lr = 1e-3
probe_prompts = 8
probe_every_steps = 2
"""

OBJECTIVES = """
[[objective]]
name = "mle"
[[objective]]
name = "rloo"
k = 2
prompt_tokens = 4
rollout_tokens = 8
[[objective]]
name = "ppo"
prompt_tokens = 4
rollout_tokens = 8
ppo_epochs = 2
[[objective]]
name = "dpo"
"""

METRICS = '["perplexity", "distinct", "self_bleu", "reward", "policy_kl", "reward_model"]'


@pytest.fixture
def write(tmp_path: Path):
    write_tiny_corpus(tmp_path)

    def spec(
        regime: str = FINETUNE,
        objectives: str = OBJECTIVES,
        preferences: str = PREFERENCES,
        metrics: str = METRICS,
        budget: int = 512,
    ) -> Path:
        path = tmp_path / "spec.toml"
        path.write_text(
            SPEC.format(
                corpus=tmp_path / "corpus.txt", cache=tmp_path / "cache", regime=regime,
                objectives=objectives, preferences=preferences, metrics=metrics, budget=budget,
            )
        )  # fmt: skip
        return path

    return spec


def problems(path: Path) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(path)
    return str(err.value)


def test_an_unknown_preference_source_is_refused(write) -> None:
    text = problems(write(preferences=PREFERENCES.replace("reward_function", "crowd")))
    assert "preferences[0].source: expected a preference source" in text and "'crowd'" in text


def test_a_policy_method_without_a_reference_is_refused(write) -> None:
    text = problems(write(regime="", preferences="", metrics='["perplexity"]'))
    assert "objective[1].name: expected a reference policy for 'rloo'" in text
    assert "objective[3].name: expected a reference policy for 'dpo'" in text


def test_learning_from_preferences_without_a_preferences_table_is_refused(write) -> None:
    text = problems(write(preferences="", metrics='["perplexity"]'))
    assert "preferences: expected a [[preferences]] table for corpus 'text'" in text


def test_rloo_needs_two_samples_per_prompt(write) -> None:
    text = problems(write(objectives=OBJECTIVES.replace("k = 2", "k = 1")))
    assert "objective[1].k: expected an integer >= 2, got 1" in text


def test_a_negative_dpo_beta_is_refused(write) -> None:
    text = problems(write(objectives=OBJECTIVES + "beta = -0.1\n"))
    assert "objective[3].beta: expected a number > 0, got -0.1" in text


def test_an_oracle_source_needs_an_oracle_corpus(write) -> None:
    oracle = re.sub(r"function = .*\n", "", PREFERENCES.replace('"reward_function"', '"oracle"'))
    text = problems(write(preferences=oracle))
    assert "expected a corpus with an oracle for source 'oracle'" in text


def test_a_rollout_longer_than_the_context_is_refused(write) -> None:
    text = problems(
        write(objectives=OBJECTIVES.replace("rollout_tokens = 8", "rollout_tokens = 40"))
    )
    assert (
        "objective[1].rollout_tokens: expected prompt_tokens + rollout_tokens <= "
        "model.block_size (32), got 44" in text
    )


# a whole matrix


def test_a_matrix_trains_a_reward_model_then_rloo_ppo_and_dpo_against_mle(write, tmp_path) -> None:
    from beyondmle.cells import expand
    from beyondmle.runner import run_spec

    spec = parse_spec(write())
    cells = expand(spec)
    roles = [c.role for c in cells]
    assert roles[:2] == ["base", "reward"] and roles[2:] == ["train"] * 4
    reward = cells[1]
    by_label = {c.objective.label: c for c in cells[2:]}
    assert by_label["rloo"].reward == reward and by_label["dpo"].reward == reward
    assert by_label["mle"].reward is None and by_label["mle"].scorer == reward

    summary = run_spec(spec, tmp_path / "out")
    assert not summary.failed, summary.failed
    assert len(summary.done) == 6

    conn = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    values = {
        (o, m): v
        for o, m, v in conn.execute(
            "SELECT objective, metric, value FROM metrics WHERE decoding IN ('', 'temperature=1')"
        )
    }
    accuracy = values[("reward-model", "reward_accuracy")]
    assert 0.0 <= accuracy <= 1.0 and values[("reward-model", "reward_pairs")] == 64
    assert 0.5 <= values[("reward-model", "label_agreement")] <= 1.0
    for label in ("mle", "rloo", "ppo", "dpo"):
        assert (label, "proxy_reward") in values and (label, "gold_reward") in values
        assert (label, "kl_k3") in values and values[(label, "kl_k3")] >= 0
    assert ("mle-base", "kl_k3") not in values  # the base has no reference but itself

    forward = dict(
        conn.execute(
            "SELECT c.objective, v.value FROM cell_compute v JOIN cells c ON c.id = v.cell_id "
            "WHERE v.key = 'forward_tokens'"
        )
    )
    # Every pass counts, by hand: 4 steps of 4 rollouts (prompt P = 4, continuation L = 8).
    # Sampling runs the prompts (4 x 4) and feeds back 7 tokens per row (4 x 7); a pass over a
    # rollout for its log-probabilities covers P + L - 1 = 11 positions, the reward model's
    # P + L = 12. RLOO: policy, reference, reward model. PPO: old policy, reference, value,
    # reward model, then 2 epochs of policy and value. DPO: policy and reference on 4 chosen
    # and 4 rejected continuations.
    sampling = 4 * 4 + 4 * 7
    assert forward["rloo"] == 4 * (sampling + 4 * 11 + 4 * 11 + 4 * 12)
    assert forward["ppo"] == 4 * (sampling + 3 * 4 * 11 + 4 * 12 + 2 * 2 * 4 * 11)
    assert forward["dpo"] == 4 * (2 * 8 * 11)
    assert forward["mle"] == 4 * 4 * 32

    log = (tmp_path / "out" / "cells" / by_label["rloo"].id / "logs" / "metrics.csv").read_text()
    assert "probe/kl_k3" in log and "probe/gold_reward" in log and "probe/proxy_reward" in log

    html = build_report(tmp_path / "out").read_text(encoding="utf-8")
    assert 'id="preferences"' in html and "over-optimization" in html
    assert "held-out accuracy" in html

    again = run_spec(spec, tmp_path / "out")  # everything is done: nothing runs, nothing fails
    assert not again.done and not again.failed
