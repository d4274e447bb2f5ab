"""Cells: the units of the benchmark matrix. A cell is one trained model: a corpus, the model
size, the training budget, one objective variant and one seed. Decoding settings are not part
of a cell: they share its trained model, which is trained once and decoded many times.
A cell's id is a hash of its resolved configuration, so re-running a spec finds its cells."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from beyondmle.model import ModelConfig
from beyondmle.spec import CorpusSpec, ObjectiveVariant, Spec
from beyondmle.training import TrainingConfig


@dataclass(frozen=True)
class Cell:
    corpus: CorpusSpec
    model: dict
    training: TrainingConfig
    objective: ObjectiveVariant
    seed: int

    @property
    def config(self) -> dict:
        """Everything that determines the trained model, with every default filled in."""
        return {
            "corpus": {"name": self.corpus.name, **self.corpus.settings},
            "model": {
                k: v for k, v in asdict(ModelConfig(**self.model)).items() if k != "vocab_size"
            },
            "training": asdict(self.training),
            "objective": {"name": self.objective.name, "settings": self.objective.settings},
            "seed": self.seed,
        }

    @property
    def id(self) -> str:
        blob = json.dumps(self.config, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return f"{self.corpus.name} / {self.objective.label} / seed {self.seed}"


def expand(spec: Spec) -> list[Cell]:
    """All cells of a spec: corpora × seeds × objective variants, in a stable order."""
    return [
        Cell(corpus, spec.model, spec.training, objective, seed)
        for corpus in spec.corpora
        for seed in spec.seeds
        for objective in spec.objectives
    ]


def select_shard(cells: list[Cell], shard: tuple[int, int]) -> list[Cell]:
    """Every N-th cell, starting at I, for `--shard I/N`."""
    index, count = shard
    return cells[index::count]
