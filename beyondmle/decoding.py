"""Decoding: turning the shared model's next-token distributions into text.

Greedy search, temperature sampling, top-k (Fan et al. 2018, "Hierarchical Neural Story
Generation", §5.4) and nucleus / top-p sampling (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", §3.1). Decoding matters as much as training for the quality of
text, so the benchmark sweeps these settings over one trained model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from beyondmle.settings import Settings, setting


class DecodingModel(Protocol):
    """The part of the model interface (`beyondmle.api.CausalLM`) that decoding uses."""

    training: bool

    def new_cache(self, batch_size: int, max_len: int) -> Any: ...

    def step(self, ids: torch.Tensor, cache: Any) -> torch.Tensor: ...

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class DecodingConfig(Settings):
    """One decoding setting. `greedy` ignores the sampling knobs."""

    greedy: bool = False
    temperature: float = setting(1.0, gt=0.0)
    top_k: int | None = setting(None, ge=1)
    top_p: float | None = setting(None, gt=0.0, le=1.0)

    @property
    def label(self) -> str:
        """Canonical name stored in the results, e.g. `greedy`, `top_p=0.9`, `temperature=0.7`."""
        if self.greedy:
            return "greedy"
        parts = []
        if self.top_k is not None:
            parts.append(f"top_k={self.top_k}")
        if self.top_p is not None:
            parts.append(f"top_p={self.top_p:g}")
        if self.temperature != 1.0 or not parts:
            parts.append(f"temperature={self.temperature:g}")
        return ",".join(parts)


def filter_logits(logits: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    """Apply temperature, top-k and top-p to logits (B, V); removed tokens get -inf."""
    logits = _temperature_top_k(logits, config)
    if config.top_p is not None and config.top_p < 1.0:
        _, order, drop_sorted = _sorted_nucleus(logits, config.top_p)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _temperature_top_k(logits: torch.Tensor, config: DecodingConfig) -> torch.Tensor:
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def _sorted_nucleus(
    logits: torch.Tensor, top_p: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities in descending order (B, V), the order (token ids), and which to drop.

    The nucleus is the smallest prefix whose mass reaches p: a token is dropped when the mass
    before it already does. The most likely token always survives.
    """
    probs = logits.softmax(dim=-1)  # (B, V)
    probs_sorted, order = sort_rows_descending(probs)
    drop = (probs_sorted.cumsum(dim=-1) - probs_sorted) >= top_p
    return probs_sorted, order, drop


# Above this many keys the 1-D radix sort lost to a float sort per row on CPU (2048 x 10k:
# 829 ms against 672 ms in `benchmarks/speed.py`).
RADIX_SORT_MAX_KEYS = 1 << 20


def sort_rows_descending(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of non-negative `probs` (B, V) sorted in descending order, and the order; ties
    keep token order.

    Up to `RADIX_SORT_MAX_KEYS` entries, one stable sort of int64 keys (row, then the
    probability's bit pattern inverted: for non-negative floats the bits order like the values)
    replaces a float sort per row, because PyTorch radix-sorts 1-D integer keys. At evaluation's
    batch, 64 x 10k, that was 2.3x faster on random rows and 1.3x on a trained PTB model's
    next-token distributions, and the sort is most of top-p decoding's cost.
    """
    B, V = probs.shape
    if B * V > RADIX_SORT_MAX_KEYS:
        return torch.sort(probs, dim=-1, descending=True, stable=True)
    bits = probs.contiguous().view(torch.int32).long()  # (B, V), in [0, 2^31)
    rows = torch.arange(B, device=probs.device)[:, None]
    keys = (rows << 31) | ((1 << 31) - 1 - bits)
    flat = torch.sort(keys.flatten(), stable=True).indices  # (B * V,), row by row
    return probs.flatten()[flat].view(B, V), (flat.view(B, V) - rows * V)


def next_token(logits: torch.Tensor, config: DecodingConfig, generator=None) -> torch.Tensor:
    """Pick the next token (B,) from the last-position logits (B, V)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    logits = _temperature_top_k(logits.float(), config)
    probs = logits.softmax(dim=-1)
    if config.top_p is None or config.top_p >= 1.0:
        return sample_categorical(probs, generator)
    return sample_nucleus(probs, config.top_p, generator)


# Rounds of drawing before the rows still unaccepted fall back to sorting (a nucleus of mass
# top_p accepts a draw with probability >= top_p, so this is reached only for tiny top_p).
NUCLEUS_ROUNDS = 8


def in_nucleus(probs: torch.Tensor, tokens: torch.Tensor, top_p: float) -> torch.Tensor:
    """Whether each row's token (B,) lies in the row's nucleus: the mass of the tokens before
    it in the descending order, ties broken by token id as a stable sort breaks them, is below
    top_p (Holtzman et al. 2020, §3.1, with `_sorted_nucleus`'s tie rule)."""
    chosen = probs.gather(1, tokens[:, None])  # (B, 1)
    heavier = torch.where(probs > chosen, probs, 0.0).sum(dim=-1, dtype=torch.float64)
    equal = probs == chosen
    tied = equal.sum(dim=-1) > 1  # rare: tokens of exactly the chosen token's probability
    if bool(tied.any()):
        ids = torch.arange(probs.size(1), device=probs.device)
        first = (equal[tied] & (ids[None, :] < tokens[tied, None])).sum(dim=-1)
        heavier[tied] += first * chosen[tied, 0].double()
    return heavier < top_p


def sample_nucleus(probs: torch.Tensor, top_p: float, generator=None) -> torch.Tensor:
    """One draw per row from the nucleus of `probs` (B, V), renormalised: by rejection.

    A draw from the whole row is kept when it lies in the nucleus (`in_nucleus`); otherwise the
    row draws again. Accepted draws follow the row's distribution restricted to the nucleus,
    which is nucleus sampling exactly, and the nucleus holds at least top_p of the mass, so a
    draw is accepted with probability >= top_p. It needs no sort of the vocabulary, which made
    top-p decoding 5x slower than plain sampling (10k tokens on CPU). Rows still unaccepted
    after `NUCLEUS_ROUNDS` are drawn in sorted order."""
    out = torch.empty(probs.size(0), dtype=torch.long, device=probs.device)
    rows = torch.arange(probs.size(0), device=probs.device)
    for _ in range(NUCLEUS_ROUNDS):
        part = probs[rows]
        drawn = sample_categorical(part, generator)
        accept = in_nucleus(part, drawn, top_p)
        out[rows[accept]] = drawn[accept]
        rows = rows[~accept]
        if rows.numel() == 0:
            return out
    part = probs[rows]
    sorted_probs, order, drop = _sorted_nucleus(part.log(), top_p)
    rank = sample_categorical(sorted_probs.masked_fill(drop, 0.0), generator)
    out[rows] = order.gather(-1, rank[:, None]).squeeze(1)
    return out


def uniform(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """U(0, 1) draws from `generator` (global when None), made where the generator lives and
    moved to `device`: a CPU generator can then drive draws for a GPU model."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=dtype, device=where).to(device)


def sample_categorical(probs: torch.Tensor, generator=None) -> torch.Tensor:
    """One draw per row (B,) from the categorical distributions `probs` (B, V), by inverse CDF.

    One uniform per row is located in two steps: among blocks of about sqrt(V) tokens, by the
    cumulative block masses, then within the chosen block, by its own cumulative sums (in
    float64, so a rare token keeps its share of the block's mass). This is exact up to float
    rounding of the block masses, a token of probability 0 has an empty interval and is never
    drawn, and rows need not be normalised. On CPU (10k tokens) it is 84x faster than
    `torch.multinomial` at B = 64 and 130x at B = 2048 (scheduled sampling's training passes);
    `torch.multinomial` had made sampling the largest cost of evaluation. Like it, this raises
    RuntimeError on non-finite probabilities.
    """
    B, V = probs.shape
    width = math.isqrt(V - 1) + 1  # block width: ceil(sqrt(V))
    blocks = -(-V // width)
    if blocks * width != V:
        probs = F.pad(probs, (0, blocks * width - V))
    grid = probs.view(B, blocks, width)
    cdf = grid.sum(dim=-1).double().cumsum(dim=-1)  # (B, blocks)
    total = cdf[:, -1:].contiguous()  # (B, 1)
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise RuntimeError("probabilities must be finite and not all zero")
    u = uniform((B, 1), generator, cdf.device, cdf.dtype) * total
    # The first block whose cumulative mass exceeds u; u can round up to the total itself,
    # and then it is the last block with mass. Likewise within the block.
    block = torch.minimum(
        torch.searchsorted(cdf, u, right=True), torch.searchsorted(cdf, total)
    )  # (B, 1)
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp_min(0)), 0.0)
    inner = grid.gather(1, block[:, :, None].expand(B, 1, width)).squeeze(1)
    inner = inner.double().cumsum(dim=-1)  # (B, width)
    within = torch.minimum(
        torch.searchsorted(inner, u - before, right=True),
        torch.searchsorted(inner, inner[:, -1:].contiguous()),
    )
    return (block * width + within).squeeze(1)


@torch.no_grad()
def generate(
    model: DecodingModel,
    prompts: torch.Tensor,
    max_new_tokens: int,
    config: DecodingConfig,
    *,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Continue each prompt row of `prompts` (B, P) by up to `max_new_tokens` tokens.

    With `eos_id` set, a row stops at its end-of-sequence token (kept in the output) and the
    batch stops once every row has. Returns the new tokens of each row, without the prompt.
    `use_cache=False` recomputes the whole context every step; it exists as the reference for
    tests and for the cached-vs-recomputed speed benchmark.
    """
    was_training = model.training
    model.eval()
    B = prompts.size(0)
    out = torch.empty(B, 0, dtype=torch.long, device=prompts.device)
    finished = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    if use_cache:
        cache = model.new_cache(B, prompts.size(1) + max_new_tokens)
        logits = model.step(prompts, cache)[:, -1]  # (B, V)
    else:
        logits = model.logits(model.hidden_states(prompts)[:, -1])
    for step in range(max_new_tokens):
        token = next_token(logits, config, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        out = torch.cat([out, token[:, None]], dim=1)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        if use_cache:
            logits = model.step(token[:, None], cache)[:, -1]
        else:
            logits = model.logits(model.hidden_states(torch.cat([prompts, out], dim=1))[:, -1])
    model.train(was_training)
    rows = out.tolist()
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]
