"""The data module: fixed-length training blocks, and the evaluation protocol's prompt /
continuation pairs.

Evaluation follows the protocol of Welleck et al. 2020 ("Neural Text Generation with
Unlikelihood Training", §6) and Pillutla et al. 2021 ("MAUVE", §4): the held-out token stream is
cut into consecutive windows of k + m tokens; the first k tokens are the prompt, the next m the
human continuation. Model continuations are exactly m tokens long, so human and model text have
the same length, which MAUVE needs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from beyondmle.api import Corpus, CorpusError


class TokenBlocks(Dataset):
    """Consecutive blocks of `block_size + 1` tokens; neighbours share one token, so every
    token of the stream but the first is a next-token target exactly once."""

    def __init__(self, tokens: list[int], block_size: int) -> None:
        self.tokens = torch.tensor(tokens, dtype=torch.long)
        self.block_size = block_size
        self.n = (len(tokens) - 1) // block_size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.block_size
        return self.tokens[start : start + self.block_size + 1]


@dataclass(frozen=True)
class PromptPairs:
    """Prompts (N, k) and human continuations (N, m) from a held-out split."""

    prompts: torch.Tensor
    continuations: torch.Tensor


def prompt_continuation_pairs(
    tokens: list[int], prompt_tokens: int, continuation_tokens: int, max_pairs: int | None = None
) -> PromptPairs:
    """Cut a token stream into windows of k + m tokens: prompt = first k, continuation = next m."""
    window = prompt_tokens + continuation_tokens
    n = len(tokens) // window
    if max_pairs is not None:
        n = min(n, max_pairs)
    t = torch.tensor(tokens[: n * window], dtype=torch.long).view(n, window)
    return PromptPairs(prompts=t[:, :prompt_tokens], continuations=t[:, prompt_tokens:])


def check_corpus_fits(corpus: Corpus, block_size: int, window: int) -> None:
    """Refuse a corpus too small for the model's context or the evaluation windows, before
    anything trains."""
    train = len(corpus.stream("train"))
    if train < block_size + 1:
        raise CorpusError(
            f"corpus {corpus.name!r}: the train split has {train} tokens, fewer than one training "
            f"block of block_size + 1 = {block_size + 1}; use more text or a smaller block_size"
        )
    for split in ("valid", "test"):
        n = len(corpus.stream(split))
        if n < window:
            raise CorpusError(
                f"corpus {corpus.name!r}: the {split} split has {n} tokens, fewer than one "
                f"evaluation window of prompt + continuation = {window} tokens"
            )


def derive_seed(seed: int, purpose: str) -> int:
    """An independent seed for one use of a cell's seed (data order, initialisation, training
    noise, the objective's own draws), so that no use shifts another's random stream."""
    digest = hashlib.sha256(f"{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


class GlobalBatchSampler(Sampler[int]):
    """One shuffled order of the whole set per epoch, cut into global batches of `batch_size ×
    world` rows; rank r takes the r-th slice of each. On one process this is exactly torch's
    RandomSampler with the same generator; on several, the ranks of a step together see the
    rows one process would see at the same global batch, so a cell's data order, and the
    pairing of objectives under one seed, do not depend on how many processes train it.
    (Lightning's DistributedSampler would reshuffle with its own seed; the trainer is told not
    to substitute it.)"""

    def __init__(
        self, n: int, batch_size: int, rank: int, world: int, generator: torch.Generator
    ) -> None:
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.generator = generator
        self.drop_last = n >= batch_size * world
        steps = n // (batch_size * world) if self.drop_last else 1
        self.length = steps * batch_size if self.drop_last else len(range(rank, n, world))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        if not self.drop_last:  # fewer rows than one global batch: every row once
            yield from order[self.rank :: self.world]
        else:
            step = self.batch_size * self.world
            for start in range(0, self.length // self.batch_size * step, step):
                first = start + self.rank * self.batch_size
                yield from order[first : first + self.batch_size]
        # RandomSampler draws a second, empty permutation at the end of each epoch; so does
        # this, so one process's order stays bit-identical to RandomSampler's in every epoch.
        torch.randperm(self.n, generator=self.generator)


class LanguageDataModule(L.LightningDataModule):
    """Training blocks of the train split; validation blocks of the valid split for the loss
    curve (the exact held-out perplexity is computed after training, see `evaluation`)."""

    def __init__(
        self,
        corpus: Corpus,
        block_size: int,
        batch_size: int,
        max_val_blocks: int = 64,
        order_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.block_size = block_size
        self.batch_size = batch_size
        self.max_val_blocks = max_val_blocks
        # The data order has its own generator: whatever else draws random numbers (a
        # discriminator's initialisation, dropout), two objectives under one seed see the same
        # batches in the same order. None: torch's global generator.
        self.order_seed = order_seed

    def setup(self, stage: str | None = None) -> None:
        self.train_set = TokenBlocks(self.corpus.stream("train"), self.block_size)
        val = self.corpus.stream("valid")[: self.max_val_blocks * self.block_size + 1]
        self.val_set = TokenBlocks(val, min(self.block_size, len(val) - 1))

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator()
        if self.order_seed is not None:
            generator.manual_seed(self.order_seed)
        else:
            generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_()))
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = GlobalBatchSampler(len(self.train_set), self.batch_size, rank, world, generator)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=generator,
            drop_last=sampler.drop_last,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
