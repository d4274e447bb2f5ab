"""The oracle tier, where the answer is known: a student that is the oracle has no KL and no
excess error; bigram oracles and students have closed-form KLs; disjoint mixture components
have posteriors of exactly 0 or 1; the oracle corpus is reproducible and keyed by its settings;
bad settings are refused before anything trains."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from beyondmle.api import EvalInputs
from beyondmle.decoding import DecodingConfig
from beyondmle.metrics.oracle import (
    exposure_bias_metric,
    modes_metric,
    oracle_coverage_metric,
    oracle_quality_metric,
)
from beyondmle.model import GPT, ModelConfig
from beyondmle.oracle_corpus import OracleSettings, sampled_streams
from beyondmle.oracles import BigramOracle, LMOracle, MixtureOracle
from beyondmle.spec import SpecError, parse_spec

BOS = 0
PROMPT, CONTINUATION = 3, 5


class TableModel(torch.nn.Module):
    """A student with the model interface whose next-token law is an oracle's (a bigram table
    or a mixture), recomputed from the whole context at each decoding step."""

    def __init__(self, oracle) -> None:
        super().__init__()
        self.oracle = oracle
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def hidden_states(self, ids=None, *, embeddings=None, cache=None):
        if cache is not None:
            cache.append(ids)
            ids = torch.cat(cache, dim=1)
        return self.oracle.next_log_probs(ids).float()

    def logits(self, hidden):
        return hidden

    def new_cache(self, batch_size, max_len):
        return []

    def step(self, ids, cache):
        return self.logits(self.hidden_states(ids, cache=cache))[:, -ids.size(1) :]


SAMPLING = DecodingConfig()


def inputs_for(oracle, student, n=2000, decoding=SAMPLING, seed=0) -> EvalInputs:
    """Oracle prompts and references, and the student's continuations at `decoding`."""
    from beyondmle.decoding import generate

    generator = torch.Generator().manual_seed(seed)
    sequences = oracle.sample(n, PROMPT + CONTINUATION, BOS, generator)
    prompts = sequences[:, :PROMPT]
    samples = generate(student, prompts, CONTINUATION, decoding, generator=generator)
    return EvalInputs(
        settings={"sample_seed": seed},
        model=student,
        oracle=oracle,
        prompts=prompts.tolist(),
        references=sequences[:, PROMPT:].tolist(),
        samples=samples,
        decoding=decoding,
        bos=BOS,
    )


def values(rows) -> dict[str, float]:
    return {r.name: r.value for r in rows}


def random_bigram(vocab: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(vocab, vocab, generator=g), dim=-1)


def test_a_student_that_is_the_oracle_has_no_kl_and_no_excess_error() -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=12, block_size=16, n_layer=1, n_head=2, n_embd=16))
    model.eval()
    oracle = LMOracle(model)
    inputs = inputs_for(oracle, model, n=200)
    coverage = values(oracle_coverage_metric(inputs))
    assert abs(coverage["forward_kl"]) <= 3 * coverage["forward_kl_se"] + 1e-6
    quality = values(oracle_quality_metric(inputs))
    assert abs(quality["reverse_kl"]) <= 3 * quality["reverse_kl_se"] + 1e-6
    exposure = values(exposure_bias_metric(inputs))
    assert exposure["per_step_error"] == pytest.approx(0.0, abs=1e-6)
    assert all(exposure[f"ex_acc_err_{p}"] == 0.0 for p in (25, 50, 75, 100))


def exact_rates(P: torch.Tensor, Q: torch.Tensor) -> tuple[float, float]:
    """Per-token forward KL(P || Q) on P's sequences and reverse KL(Q || P) on continuations of
    P's prompts by Q, by propagating the law of the previous token exactly."""
    P, Q = P.double(), Q.double()
    kl_pq = (P * (P.log() - Q.log())).sum(-1)  # KL of the rows, given the previous token
    kl_qp = (Q * (Q.log() - P.log())).sum(-1)
    state = torch.zeros(P.size(0), dtype=torch.float64)
    state[BOS] = 1.0
    forward = []
    for _ in range(PROMPT + CONTINUATION - 1):
        forward.append(float(state @ kl_pq))
        state = state @ P
    state = torch.zeros(P.size(0), dtype=torch.float64)
    state[BOS] = 1.0
    for _ in range(PROMPT - 1):
        state = state @ P  # the law of the prompt's last token
    reverse = []
    for _ in range(CONTINUATION):
        reverse.append(float(state @ kl_qp))
        state = state @ Q
    return sum(forward) / len(forward), sum(reverse) / len(reverse)


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4)])
def test_bigram_kls_match_the_exact_sums(seeds) -> None:
    P, Q = random_bigram(6, seeds[0]), random_bigram(6, seeds[1], sharpness=1.0)
    oracle, student = BigramOracle(P), TableModel(BigramOracle(Q))
    inputs = inputs_for(oracle, student, n=4000)
    forward, reverse = exact_rates(P, Q)
    coverage = values(oracle_coverage_metric(inputs))
    quality = values(oracle_quality_metric(inputs))
    assert abs(coverage["forward_kl"] - forward) <= 3.5 * coverage["forward_kl_se"]
    assert abs(quality["reverse_kl"] - reverse) <= 3.5 * quality["reverse_kl_se"]
    assert forward > 0.05 and reverse > 0.05  # not trivially zero


def exact_step_errors(P: torch.Tensor, Q: torch.Tensor) -> tuple[list[float], list[float]]:
    """KL(P || Q) of the next-token rows at each continuation step, in expectation: along P's
    own continuations (teacher forcing: eps_j) and along Q's continuations of P's prompts
    (the student's own prefixes: the terms of R), by propagating the previous token's law."""
    P, Q = P.double(), Q.double()
    kl_pq = (P * (P.log() - Q.log())).sum(-1)
    prompt_end = torch.zeros(P.size(0), dtype=torch.float64)
    prompt_end[BOS] = 1.0
    for _ in range(PROMPT - 1):
        prompt_end = prompt_end @ P  # the law of the prompt's last token
    teacher, own = [], []
    along_p, along_q = prompt_end, prompt_end
    for _ in range(CONTINUATION):
        teacher.append(float(along_p @ kl_pq))
        own.append(float(along_q @ kl_pq))
        along_p, along_q = along_p @ P, along_q @ Q
    return teacher, own


@pytest.mark.parametrize("seeds", [(1, 2), (5, 6)])
def test_bigram_exposure_bias_matches_the_exact_errors(seeds) -> None:
    P, Q = random_bigram(6, seeds[0]), random_bigram(6, seeds[1], sharpness=1.0)
    inputs = inputs_for(BigramOracle(P), TableModel(BigramOracle(Q)), n=4000)
    teacher, own = exact_step_errors(P, Q)
    eps, regret = sum(teacher) / CONTINUATION, sum(own)
    exposure = values(exposure_bias_metric(inputs))
    assert exposure["per_step_error"] == pytest.approx(eps, rel=0.02)
    assert exposure["regret_per_step"] == pytest.approx(regret / CONTINUATION, rel=0.02)
    excess = 100 * (regret - CONTINUATION * eps) / (CONTINUATION * eps)
    assert exposure["ex_acc_err_100"] == pytest.approx(excess, abs=2.0)
    assert abs(excess) > 8  # the student's own prefixes differ: not trivially zero


def test_metrics_sharing_one_evaluation_keep_each_decoding_apart() -> None:
    """The oracle metrics share their forward passes through `EvalInputs.shared`; a second
    decoding's samples must be scored afresh, not served the first decoding's scores."""
    P, Q = random_bigram(6, 1), random_bigram(6, 2, sharpness=1.0)
    oracle, student = BigramOracle(P), TableModel(BigramOracle(Q))
    sampled = inputs_for(oracle, student, n=500)
    greedy = inputs_for(oracle, student, n=500, decoding=DecodingConfig(greedy=True))
    alone = [values(exposure_bias_metric(i)) | values(oracle_quality_metric(i))
             for i in (sampled, greedy)]  # fmt: skip
    shared: dict = {}
    together = []
    for i in (sampled, greedy):
        i = replace(i, shared=shared)
        values(oracle_coverage_metric(i))
        together.append(values(oracle_quality_metric(i)) | values(exposure_bias_metric(i)))
    assert together == alone
    assert alone[0]["nll_oracle"] != alone[1]["nll_oracle"]
    assert len(shared) == 3  # the references once, each decoding's samples once


def disjoint_mixture() -> MixtureOracle:
    """Two bigram components on disjoint tokens after the start: {1, 2, 3} and {4, 5, 6}."""
    tables = []
    for low in (1, 4):
        table = torch.zeros(7, 7)
        table[:, low : low + 3] = torch.rand(7, 3, generator=torch.Generator().manual_seed(low))
        tables.append(table / table.sum(-1, keepdim=True))
    return MixtureOracle([BigramOracle(t) for t in tables], [0.3, 0.7])


def test_disjoint_components_have_posteriors_of_exactly_zero_or_one() -> None:
    mixture = disjoint_mixture()
    samples = mixture.sample(300, 8, BOS, torch.Generator().manual_seed(0))
    post = mixture.posteriors(samples)
    first = samples[:, 1] <= 3
    assert torch.equal(
        post[first], torch.tensor([1.0, 0.0], dtype=post.dtype).expand(int(first.sum()), 2)
    )
    assert torch.equal(
        post[~first], torch.tensor([0.0, 1.0], dtype=post.dtype).expand(int((~first).sum()), 2)
    )


def test_the_mixture_as_its_own_student_recovers_the_weights() -> None:
    mixture = disjoint_mixture()
    inputs = inputs_for(mixture, TableModel(mixture), n=1000)
    modes = values(modes_metric(inputs))
    assert abs(modes["mode_weight_1"] - 0.3) <= 3 * modes["mode_weight_1_se"]
    assert modes["modes_dropped"] == 0
    one_mode = values(modes_metric(inputs_for(mixture, TableModel(mixture.components[1]), n=500)))
    assert one_mode["mode_weight_1"] == 0.0 and one_mode["modes_dropped"] == 1
    assert one_mode["mode_tv"] == pytest.approx(0.3)


def test_the_mixtures_next_token_law_is_the_posterior_weighted_mix() -> None:
    P, Q = random_bigram(5, 7), random_bigram(5, 8)
    mixture = MixtureOracle([BigramOracle(P), BigramOracle(Q)], [0.25, 0.75])
    ids = torch.tensor([[0, 2, 4]])
    like_p = P[0, 2] * P[2, 4]
    like_q = Q[0, 2] * Q[2, 4]
    pi = 0.25 * like_p / (0.25 * like_p + 0.75 * like_q)
    expected = pi * P[4] + (1 - pi) * Q[4]
    got = mixture.next_log_probs(ids)[0, -1].exp()
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=1e-5)


def test_the_oracle_corpus_is_the_same_for_the_same_seed_and_keyed_by_every_setting(
    tmp_path: Path,
) -> None:
    settings = OracleSettings(train_sequences=20, valid_sequences=5, test_sequences=5,
                              sequence_length=6, teacher_context=8)  # fmt: skip
    oracle = BigramOracle(random_bigram(9, 0))
    first = sampled_streams(settings, oracle, BOS, tmp_path / "a")
    second = sampled_streams(settings, oracle, BOS, tmp_path / "b")
    assert all(np.array_equal(first[s], second[s]) for s in first)
    assert first["train"].shape == (20, 6) and (first["train"][:, 0] == BOS).all()
    other = sampled_streams(replace(settings, seed=1), oracle, BOS, tmp_path / "c")
    assert not np.array_equal(first["train"], other["train"])
    changed = {
        "checkpoint": None, "teacher_corpus": "text", "teacher_layers": 3, "teacher_heads": 2,
        "teacher_width": 64, "teacher_context": 9, "teacher_dropout": 0.2,
        "teacher_budget_tokens": 7, "teacher_batch_size": 3, "teacher_lr": 1e-3,
        "teacher_seed": 5, "temperature": 0.7,
        "components": [{"kind": "random", "weight": 1.0}],
        "train_sequences": 21, "valid_sequences": 6, "test_sequences": 6, "sequence_length": 7,
        "seed": 3,
    }  # fmt: skip
    for f in fields(OracleSettings):
        if f.name in ("cache_dir", "checkpoint"):
            continue
        assert replace(settings, **{f.name: changed[f.name]}).key() != settings.key(), f.name
    assert replace(settings, cache_dir="/elsewhere").key() == settings.key()


SPEC = """
[benchmark]
name = "oracle-bad"
seeds = [0]
[[corpus]]
name = "oracle"
{corpus}
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
[[objective]]
name = "mle"
[evaluation]
prompt_tokens = 20
continuation_tokens = 40
metrics = ["perplexity", "oracle_coverage"]
"""


@pytest.mark.parametrize(
    ("corpus", "message"),
    [
        ('checkpoint = "/no/such/model.ckpt"', "corpus[0].checkpoint: expected a checkpoint file"),
        (
            'components = [{kind = "random", weight = 0.5}, {kind = "random", weight = 0.4}]',
            "corpus[0].components: expected weights that sum to 1, got 0.9",
        ),
        ("teacher_context = 32", "corpus[0].teacher_context: expected at least sequence_length"),
        ("sequence_length = 50", "corpus[0].sequence_length: expected evaluation.prompt_tokens"),
    ],
    ids=["missing checkpoint", "weights", "oracle context", "window"],
)
def test_bad_oracle_settings_are_refused_before_anything_trains(tmp_path, corpus, message):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.format(corpus=corpus))
    with pytest.raises(SpecError) as info:
        parse_spec(path)
    assert message in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_oracle_metrics_need_an_oracle_corpus(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace('name = "oracle"', 'name = "ptb"').format(corpus=""))
    with pytest.raises(SpecError, match="'oracle_coverage' needs an oracle corpus"):
        parse_spec(path)


def test_a_spec_mixing_an_oracle_with_a_real_corpus_scores_oracle_metrics_on_the_oracle_only(
    tmp_path,
):
    import torch

    from beyondmle.api import load_corpus
    from beyondmle.evaluation import EvaluationConfig, Evaluator
    from beyondmle.model import GPT, ModelConfig

    path = tmp_path / "spec.toml"
    text = SPEC.format(corpus="").replace("[model]", '[[corpus]]\nname = "ptb"\n[model]')
    path.write_text(text.replace("block_size = 32", "block_size = 64"))
    spec = parse_spec(path)
    assert [c.name for c in spec.corpora] == ["oracle", "ptb"]
    ptb = load_corpus("ptb")
    torch.manual_seed(0)
    vocab = ptb.tokenizer.vocab_size
    model = GPT(ModelConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=16))
    metrics = ["perplexity", "oracle_coverage"]
    config = EvaluationConfig(
        prompt_tokens=8, continuation_tokens=8, num_samples=4, self_bleu_samples=4, metrics=metrics
    )
    names = {row.metric for row in Evaluator(model, ptb, config).model_metrics()[0]}
    assert "ppl_test" in names
    assert not names & {"nll_test", "oracle_entropy", "forward_kl"}  # oracle_coverage's outputs
