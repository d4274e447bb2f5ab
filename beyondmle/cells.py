"""Cells: the units of the benchmark matrix. A cell is one trained model: a corpus, the model
size, the training budget, one objective variant and one seed. Decoding settings are not part
of a cell: they share its trained model, which is trained once and decoded many times.
A cell's id is a hash of its resolved configuration, so re-running a spec finds its cells.

In the fine-tuning regime (`[regime] kind = "finetune"`) a shared MLE base is its own cell
(`role = "base"`): trained once per corpus and model (or once per seed), evaluated like any
cell, resumable and shardable. Every objective, MLE included as the control, then fine-tunes
from it; a fine-tuning cell's id includes its base's, so a new base makes new cells. With
`[regime] base = "pretrained"` the base cell (`role = "pretrained"`) is the loaded pretrained
model as it is: it trains nothing, and its id holds no training settings, so changing how the
objectives fine-tune never evaluates the pretrained model again.

With a `[[preferences]]` table, a reward model is a cell too (`role = "reward"`): trained once
per corpus, reference (the base), preference source and seed, from pairs its source draws.
Objectives that learn from preferences (`Objective.uses`) depend on it, and its id is in
theirs; every other cell of the corpus is scored by it at evaluation (the proxy and gold
reward of MLE's control), which does not change what that cell trains."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field

from beyondmle.api import get_objective
from beyondmle.hf_model import pretrained_fingerprint
from beyondmle.model import ModelConfig
from beyondmle.spec import CorpusSpec, ObjectiveVariant, Spec
from beyondmle.training import TrainingConfig

BASE_LABEL = "mle-base"
PRETRAINED_LABEL = "pretrained"
REWARD_LABEL = "reward-model"


@dataclass(frozen=True)
class Cell:
    corpus: CorpusSpec
    model: dict
    training: TrainingConfig
    objective: ObjectiveVariant
    seed: int
    base: Cell | None = None  # the cell whose model this one fine-tunes
    # "base": a shared MLE base; "pretrained": a loaded model, untrained here; "reward": a
    # reward model
    role: str = "train"
    reward: Cell | None = None  # the reward model cell this one learns from
    # The reward model that scores this cell at evaluation; not part of what it trains.
    scorer: Cell | None = field(default=None, compare=False)

    @property
    def dependencies(self) -> list[Cell]:
        """Cells that must be done before this one runs, in order."""
        return [c for c in (self.base, self.reward or self.scorer) if c is not None]

    @property
    def config(self) -> dict:
        """Everything that determines the trained model, with every default filled in."""
        model = ModelConfig(**self.model)
        config = {
            "corpus": {"name": self.corpus.name, **self.corpus.settings},
            # hf / gguf only where set: a GPT cell's id stays what it was before they existed
            "model": {
                k: v
                for k, v in asdict(model).items()
                if k != "vocab_size" and not (k in ("hf", "gguf") and v is None)
            },
            # a pretrained base trains nothing: [training] does not make it another cell
            "training": None if self.role == "pretrained" else asdict(self.training),
            "objective": {"name": self.objective.name, "settings": self.objective.settings},
            "seed": self.seed,
        }
        pretrained = pretrained_fingerprint(model)
        if pretrained is not None:  # the same path holding other weights is another model
            config["model"]["files"] = pretrained
        if self.role != "train":
            config["role"] = self.role
        if self.base is not None:
            config["base"] = {"id": self.base.id, "seed": self.base.seed}
        if self.reward is not None:
            config["reward"] = {"id": self.reward.id, "seed": self.reward.seed}
        return config

    @property
    def id(self) -> str:
        blob = json.dumps(self.config, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.corpus.name} / {self.objective.label} / seed {self.seed}"


def base_cell(spec: Spec, corpus: CorpusSpec, seed: int) -> Cell:
    """The shared MLE base of `corpus` (for `seed`, when there is one base per seed), or the
    pretrained model as loaded (`[regime] base = "pretrained"`), which keeps `[training]` only
    for the device it is evaluated on."""
    settings = dataclasses.asdict(get_objective("mle").Settings())
    base_seed = seed if spec.regime.base_per_seed else spec.regime.base_seed
    if spec.regime.base == "pretrained":
        variant = ObjectiveVariant("mle", settings, PRETRAINED_LABEL)
        return Cell(corpus, spec.model, spec.training, variant, base_seed, role="pretrained")
    mle = ObjectiveVariant("mle", settings, BASE_LABEL)
    return Cell(corpus, spec.model, spec.base_training, mle, base_seed, role="base")


def reward_cell(spec: Spec, corpus: CorpusSpec, base: Cell, seed: int) -> Cell | None:
    """The reward model of `corpus` for `seed`, learnt from the spec's preferences for it with
    `base` as the reference; None without a `[[preferences]]` table for the corpus."""
    preferences = spec.preferences_for(corpus)
    if preferences is None:
        return None
    variant = ObjectiveVariant(preferences.source, preferences.settings, REWARD_LABEL)
    return Cell(corpus, spec.model, spec.training, variant, seed, base=base, role="reward")


def expand(spec: Spec) -> list[Cell]:
    """All cells of a spec: corpora × seeds × objective variants, in a stable order; in the
    fine-tuning regime the bases come first, then the reward models."""
    if spec.regime.kind != "finetune":
        return [
            Cell(corpus, spec.model, spec.training, objective, seed)
            for corpus in spec.corpora
            for seed in spec.seeds
            for objective in spec.objectives
            if objective.runs_on(corpus.name)
        ]
    cells: list[Cell] = []
    bases: list[Cell] = []
    rewards: list[Cell] = []
    for corpus in spec.corpora:
        for seed in spec.seeds:
            base = base_cell(spec, corpus, seed)
            if base not in bases:
                bases.append(base)
            reward = reward_cell(spec, corpus, base, seed)
            if reward is not None:
                rewards.append(reward)
            for objective in spec.objectives:
                if not objective.runs_on(corpus.name):
                    continue
                learns = get_objective(objective.name).uses & {"reward_model", "preference_pairs"}
                cells.append(
                    Cell(
                        corpus,
                        spec.model,
                        spec.training,
                        objective,
                        seed,
                        base=base,
                        reward=reward if learns else None,
                        scorer=reward,
                    )
                )
    return bases + rewards + cells


def select_shard(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """Every N-th cell, starting at I, for `--shard I/N`."""
    index, count = shard
    return cells[index::count]
