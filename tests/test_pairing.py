"""Pairing by construction: two objectives under one seed start from the same weights and see
the same batches in the same order, whatever else they draw (the GAN's discriminator is
initialised, and samples, from streams of its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from beyondmle.api import load_corpus
from beyondmle.cells import Cell
from beyondmle.runner import train
from beyondmle.spec import CorpusSpec, ObjectiveVariant
from beyondmle.training import ObjectiveModule, TrainingConfig

ORIGINAL_STEP = ObjectiveModule._training_step  # before any spy wraps it

MODEL = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.0}
TRAINING = TrainingConfig(
    budget_tokens=6 * 4 * 16,
    batch_size=4,
    precision="32-true",
    accelerator="cpu",
    val_every_steps=1000,
    checkpoint_every_steps=1000,
)


@pytest.fixture(scope="module")
def ptb():
    return load_corpus("ptb")


def record(cell: Cell, corpus, out: Path, monkeypatch) -> tuple[list[torch.Tensor], dict]:
    batches: list[torch.Tensor] = []
    weights: dict = {}

    def spy(self, batch):
        if not batches:
            weights.update({k: v.clone() for k, v in self.model.state_dict().items()})
        batches.append(batch.clone())
        return ORIGINAL_STEP(self, batch)

    monkeypatch.setattr(ObjectiveModule, "_training_step", spy)
    train(cell, corpus, out, heartbeat=lambda: None)
    return batches, weights


def test_mle_and_the_gan_draw_the_same_data_and_weights_under_one_seed(
    ptb, tmp_path, monkeypatch
) -> None:
    corpus = CorpusSpec("ptb", {})
    mle = ObjectiveVariant("mle", {}, "mle")
    gan = ObjectiveVariant(
        "adversarial", {"warm_start_fraction": 0.5, "disc_layers": 1, "min_distinct1": 0.0}, "gan"
    )
    mle_batches, mle_weights = record(
        Cell(corpus, MODEL, TRAINING, mle, 3), ptb, tmp_path / "mle", monkeypatch
    )
    gan_batches, gan_weights = record(
        Cell(corpus, MODEL, TRAINING, gan, 3), ptb, tmp_path / "gan", monkeypatch
    )
    assert len(mle_batches) == len(gan_batches) == 6
    for a, b in zip(mle_batches, gan_batches, strict=True):
        assert torch.equal(a, b)
    assert mle_weights.keys() == gan_weights.keys()
    assert all(torch.equal(mle_weights[k], gan_weights[k]) for k in mle_weights)

    other, _ = record(Cell(corpus, MODEL, TRAINING, mle, 4), ptb, tmp_path / "other", monkeypatch)
    assert not torch.equal(other[0], mle_batches[0]), "another seed, another order"


def _batches(loader_for, epochs: int = 3) -> list[list[list[int]]]:
    loader = loader_for()
    return [[batch.tolist() for batch in loader] for _ in range(epochs)]


def test_the_data_order_does_not_depend_on_how_many_processes_train_a_cell() -> None:
    from torch.utils.data import DataLoader

    from beyondmle.data import GlobalBatchSampler

    rows = list(range(50))

    def torch_random_sampler(batch: int):
        generator = torch.Generator().manual_seed(3)
        return DataLoader(rows, batch_size=batch, shuffle=True, generator=generator, drop_last=True)

    def ours(batch: int, rank: int, world: int):
        generator = torch.Generator().manual_seed(3)
        sampler = GlobalBatchSampler(len(rows), batch, rank, world, generator)
        return DataLoader(rows, batch_size=batch, sampler=sampler, generator=generator,
                          drop_last=sampler.drop_last)  # fmt: skip

    one_process = _batches(lambda: torch_random_sampler(8))
    assert _batches(lambda: ours(8, 0, 1)) == one_process  # every epoch, bit for bit
    rank0, rank1 = _batches(lambda: ours(4, 0, 2)), _batches(lambda: ours(4, 1, 2))
    for epoch, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        assert [x + y for x, y in zip(a, b, strict=True)] == one_process[epoch]
