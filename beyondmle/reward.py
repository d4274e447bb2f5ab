"""The reward model of RLHF, and what a policy cell gets from it.

A reward model is the shared Transformer trunk, initialised from the reference policy (the MLE
base), with a scalar head on the last position's hidden state (Ouyang et al. 2022, §3.5;
Stiennon et al. 2020, §3.4). It learns from preference pairs with the Bradley-Terry loss
(`beyondmle.rl.bradley_terry_loss`); its scores are then shifted so the reference policy's
own continuations score 0 on average (Stiennon et al.'s normalisation), which keeps the
KL-penalised reward of an untrained policy near 0.

It is trained in a cell of its own (role "reward"), once per corpus, reference, preference
source and seed: `cells/<id>/reward.ckpt` holds its weights, `cells/<id>/pairs.pt` the
training and held-out pairs (DPO trains on the same pairs). Both load with `weights_only=True`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from beyondmle.api import (
    CausalLM,
    Corpus,
    PreferenceContext,
    PreferencePairs,
    PreferenceSource,
    Resources,
    get_preference_source,
)
from beyondmle.data import derive_seed
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.hf_model import build_model
from beyondmle.model import ModelConfig
from beyondmle.rl import bradley_terry_loss
from beyondmle.training import TrainingConfig, build_trainer, load_model, safe_load

REWARD_FILE = "reward.ckpt"
PAIRS_FILE = "pairs.pt"
SCORE_BATCH = 128


class RewardModel(nn.Module):
    """A trunk (any model with the model interface, the shared GPT or a Hugging Face model,
    used through `hidden_states`) and a scalar head; `forward` gives a score for every position
    (B, T), `score` the score of a whole continuation (its last position)."""

    def __init__(self, trunk: CausalLM) -> None:
        super().__init__()
        self.trunk = trunk
        width = trunk.info.width
        self.head = nn.Linear(width, 1)
        nn.init.normal_(self.head.weight, std=1 / math.sqrt(width + 1))  # Stiennon et al.
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.hidden_states(ids)).squeeze(-1).float()

    def score(self, prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
        return self(torch.cat([prompts, continuations], dim=1))[:, -1]

    @torch.no_grad()
    def score_all(self, prompts: torch.Tensor, continuations: torch.Tensor) -> torch.Tensor:
        """Scores (n,) in eval mode and batches, for measurement."""
        was = self.training
        self.eval()
        try:
            return torch.cat(
                [
                    self.score(prompts[i : i + SCORE_BATCH], continuations[i : i + SCORE_BATCH])
                    for i in range(0, prompts.size(0), SCORE_BATCH)
                ]
            )
        finally:
            self.train(was)


def reward_model_from(reference: CausalLM) -> RewardModel:
    return RewardModel(copy.deepcopy(reference))


@torch.no_grad()
def sample_continuations(
    model, prompts: torch.Tensor, length: int, generator: torch.Generator
) -> torch.Tensor:
    """Continuations (n, length) at temperature 1 from the KV-cached sampler, in batches."""
    rows: list[list[int]] = []
    for i in range(0, prompts.size(0), SCORE_BATCH):
        rows += generate(
            model, prompts[i : i + SCORE_BATCH], length, DecodingConfig(), generator=generator
        )
    return torch.tensor(rows, dtype=torch.long)


def windows(
    stream: list[int], prompt_tokens: int, continuation_tokens: int, n: int, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` distinct windows of prompt + continuation, chosen at random among the stream's
    consecutive windows (the evaluation's cut, so on the oracle tier each is one sequence)."""
    width = prompt_tokens + continuation_tokens
    count = len(stream) // width
    if count < n:
        raise ValueError(
            f"the split holds {count} windows of {width} tokens, fewer than the {n} asked for"
        )
    rows = torch.randperm(count, generator=generator)[:n].sort().values
    table = torch.tensor(stream[: count * width], dtype=torch.long).view(count, width)[rows]
    return table[:, :prompt_tokens], table[:, prompt_tokens:]


def preference_context(
    reference: CausalLM,
    corpus: Corpus,
    prompt_tokens: int,
    continuation_tokens: int,
    seed: int,
) -> PreferenceContext:
    """What a preference source may use: the reference's sampler, the corpus's windows, its
    oracle; all randomness from one generator seeded by the cell's seed."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "preferences"))
    return PreferenceContext(
        sample=lambda prompts, length: sample_continuations(reference, prompts, length, generator),
        windows=lambda split, n: windows(
            corpus.stream(split), prompt_tokens, continuation_tokens, n, generator
        ),
        decode=corpus.tokenizer.decode,
        prompt_tokens=prompt_tokens,
        continuation_tokens=continuation_tokens,
        generator=generator,
        oracle=getattr(corpus, "oracle", None),
        bos=corpus.tokenizer.eos_id,
    )


def make_source(name: str, settings: dict, context: PreferenceContext) -> PreferenceSource:
    cls = get_preference_source(name)
    return cls(cls.Settings(**settings), context)


class RewardModule(L.LightningModule):
    """Bradley-Terry training of a reward model; the Trainer owns the loop and precision."""

    def __init__(self, model: RewardModel, lr: float, total_steps: int) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.total_steps = total_steps
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        prompts, chosen, rejected = batch
        loss = bradley_terry_loss(
            self.model.score(prompts, chosen), self.model.score(prompts, rejected)
        )
        self.steps_done += 1
        self.log("train/bt_loss", loss.detach(), batch_size=prompts.size(0))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if int(self.steps_done) >= self.total_steps:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.0)


@torch.no_grad()
def pairwise_accuracy(model: RewardModel, pairs: PreferencePairs) -> float:
    """The share of pairs whose chosen side the model scores higher (ties count half)."""
    chosen = model.score_all(pairs.prompts, pairs.chosen)
    rejected = model.score_all(pairs.prompts, pairs.rejected)
    return float(((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean())


def gold_agreement(pairs: PreferencePairs) -> float | None:
    """The share of labels that agree with the gold order, over pairs whose gold rewards
    differ: the labels' known noise. None without a gold reward or without such pairs."""
    if pairs.gold_chosen is None:
        return None
    differ = pairs.gold_chosen != pairs.gold_rejected
    if not differ.any():
        return None
    return float((pairs.gold_chosen > pairs.gold_rejected)[differ].float().mean())


def train_reward_model(
    source_name: str,
    source_settings: dict,
    reference_path: Path,
    corpus: Corpus,
    prompt_tokens: int,
    continuation_tokens: int,
    training: TrainingConfig,
    seed: int,
    cell_dir: Path,
    precision: str | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Draw the preference pairs, train the reward model on them, normalise it on the
    reference's samples, and write `reward.ckpt` and `pairs.pt`; returns what was measured and
    what it cost (sampling the pairs, training and scoring; the pairs' sampling only when they
    were drawn by this call)."""
    reference, _, hparams = load_model(reference_path)
    context = preference_context(reference, corpus, prompt_tokens, continuation_tokens, seed)
    source = make_source(source_name, source_settings, context)
    s = source.settings
    pairs_path = cell_dir / PAIRS_FILE
    if pairs_path.exists():
        saved = safe_load(pairs_path)
        train_pairs = PreferencePairs.from_dict(saved["train"])
        heldout = PreferencePairs.from_dict(saved["heldout"])
    else:
        train_pairs = source.pairs(s.pairs, "train")
        heldout = source.pairs(s.heldout_pairs, "valid")
        cell_dir.mkdir(parents=True, exist_ok=True)
        tmp = pairs_path.with_suffix(".tmp")
        torch.save({"train": train_pairs.to_dict(), "heldout": heldout.to_dict()}, tmp)
        tmp.replace(pairs_path)
    torch.manual_seed(derive_seed(seed, "reward-init"))
    model = reward_model_from(reference)
    steps = s.reward_epochs * math.ceil(len(train_pairs) / s.reward_batch_size)
    data = DataLoader(
        TensorDataset(train_pairs.prompts, train_pairs.chosen, train_pairs.rejected),
        batch_size=s.reward_batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(derive_seed(seed, "reward-order")),
    )
    module = RewardModule(model, s.reward_lr, steps)
    config = TrainingConfig(
        **{
            **asdict(training),
            "val_every_steps": 10**9,
            "checkpoint_every_steps": max(1, steps // 4),
            "loggers": [],
        }
    )
    trainer = build_trainer(
        config, cell_dir, False, enable_progress_bar=False, precision=precision, run_name="reward"
    )
    model.train()  # the reference was loaded for inference; its copy trains with its dropout
    trainer.fit(module, train_dataloaders=data)
    model.eval()
    prompts, _ = context.windows("valid", s.heldout_pairs)
    offset = float(model.score_all(prompts, context.sample(prompts, continuation_tokens)).mean())
    with torch.no_grad():
        model.head.bias -= offset
    save_reward_model(model, hparams["model_config"], cell_dir / REWARD_FILE)
    measured = {
        "reward_accuracy": pairwise_accuracy(model, heldout),
        "reward_accuracy_train": pairwise_accuracy(model, train_pairs),
        "reward_pairs": float(len(train_pairs)),
    }
    agreement = gold_agreement(train_pairs)
    if agreement is not None:
        measured["label_agreement"] = agreement
    compute = {
        "train_flops": model.trunk.compute.flops + reference.compute.flops,
        "train_tokens": float(2 * len(train_pairs) * (prompt_tokens + continuation_tokens)),
        "forward_tokens": float(
            model.trunk.compute.forward_tokens + reference.compute.forward_tokens
        ),
        "generated_tokens": float(reference.compute.generated_tokens),
    }
    return measured, compute


def save_reward_model(model: RewardModel, model_config: dict, path: Path) -> None:
    """Weights and the reference's `[model]` table (`ModelConfig` fields), which rebuilds the
    trunk: the shared GPT, or the Hugging Face model of `hf` / `gguf`."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model_config": model_config, "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)


def load_reward_model(path: Path) -> RewardModel:
    saved = safe_load(path)
    model = RewardModel(build_model(ModelConfig(**saved["model_config"])))
    model.load_state_dict(saved["state_dict"])
    return model.eval().requires_grad_(False)


def load_pairs(cell_dir: Path) -> tuple[PreferencePairs, PreferencePairs]:
    saved = safe_load(cell_dir / PAIRS_FILE)
    return PreferencePairs.from_dict(saved["train"]), PreferencePairs.from_dict(saved["heldout"])


def probe_prompts(corpus: Corpus, prompt_tokens: int, continuation_tokens: int, n: int):
    """The over-optimization probe's prompts: `n` validation windows, the same for every cell."""
    generator = torch.Generator().manual_seed(derive_seed(0, "probe-prompts"))
    return windows(corpus.stream("valid"), prompt_tokens, continuation_tokens, n, generator)[0]


def policy_resources(
    reference_path: Path,
    reward_dir: Path | None,
    source_name: str | None,
    source_settings: dict | None,
    corpus: Corpus,
    prompt_tokens: int,
    continuation_tokens: int,
    seed: int,
) -> tuple[Resources, PreferencePairs | None]:
    """The frozen reference, reward model, training pairs and gold reward of a policy cell,
    and the held-out pairs for measurement."""
    reference, _, _ = load_model(reference_path)
    reference.requires_grad_(False)
    resources = Resources(reference=reference)
    heldout = None
    if reward_dir is not None:
        reward_model = load_reward_model(reward_dir / REWARD_FILE)
        resources.reward_model = reward_model
        resources.reward = reward_model.score_all
        resources.pairs, heldout = load_pairs(reward_dir)
        context = preference_context(reference, corpus, prompt_tokens, continuation_tokens, seed)
        source = make_source(source_name, source_settings, context)
        if type(source).gold_reward is not PreferenceSource.gold_reward:
            resources.gold = source.gold_reward
    return resources, heldout
