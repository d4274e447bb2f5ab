"""Cells: the units of the benchmark matrix. A cell is one trained model: a corpus, the model
size, the training budget, one objective variant and one seed. Decoding settings are not part
of a cell: they share its trained model, which is trained once and decoded many times.
A cell's id is a hash of its resolved configuration, so re-running a spec finds its cells.

In the fine-tuning regime (`[regime] kind = "finetune"`) a shared MLE base is its own cell
(`role = "base"`): trained once per corpus and model (or once per seed), evaluated like any
cell, resumable and shardable. Every objective, MLE included as the control, then fine-tunes
from it; a fine-tuning cell's id includes its base's, so a new base makes new cells."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass

from beyondmle.api import get_objective
from beyondmle.model import ModelConfig
from beyondmle.spec import CorpusSpec, ObjectiveVariant, Spec
from beyondmle.training import TrainingConfig

BASE_LABEL = "mle-base"


@dataclass(frozen=True)
class Cell:
    corpus: CorpusSpec
    model: dict
    training: TrainingConfig
    objective: ObjectiveVariant
    seed: int
    base: Cell | None = None  # the cell whose model this one fine-tunes
    role: str = "train"  # or "base": a shared MLE base of the fine-tuning regime

    @property
    def config(self) -> dict:
        """Everything that determines the trained model, with every default filled in."""
        config = {
            "corpus": {"name": self.corpus.name, **self.corpus.settings},
            "model": {
                k: v for k, v in asdict(ModelConfig(**self.model)).items() if k != "vocab_size"
            },
            "training": asdict(self.training),
            "objective": {"name": self.objective.name, "settings": self.objective.settings},
            "seed": self.seed,
        }
        if self.role != "train":
            config["role"] = self.role
        if self.base is not None:
            config["base"] = {"id": self.base.id, "seed": self.base.seed}
        return config

    @property
    def id(self) -> str:
        blob = json.dumps(self.config, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.corpus.name} / {self.objective.label} / seed {self.seed}"


def base_cell(spec: Spec, corpus: CorpusSpec, seed: int) -> Cell:
    """The shared MLE base of `corpus` (for `seed`, when there is one base per seed)."""
    settings = dataclasses.asdict(get_objective("mle").Settings())
    base_seed = seed if spec.regime.base_per_seed else spec.regime.base_seed
    mle = ObjectiveVariant("mle", settings, BASE_LABEL)
    return Cell(corpus, spec.model, spec.base_training, mle, base_seed, role="base")


def expand(spec: Spec) -> list[Cell]:
    """All cells of a spec: corpora × seeds × objective variants, in a stable order; in the
    fine-tuning regime the bases come first."""
    if spec.regime.kind != "finetune":
        return [
            Cell(corpus, spec.model, spec.training, objective, seed)
            for corpus in spec.corpora
            for seed in spec.seeds
            for objective in spec.objectives
        ]
    cells: list[Cell] = []
    bases: list[Cell] = []
    for corpus in spec.corpora:
        for seed in spec.seeds:
            base = base_cell(spec, corpus, seed)
            if base not in bases:
                bases.append(base)
            cells += [
                Cell(corpus, spec.model, spec.training, objective, seed, base=base)
                for objective in spec.objectives
            ]
    return bases + cells


def select_shard(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """Every N-th cell, starting at I, for `--shard I/N`."""
    index, count = shard
    return cells[index::count]
