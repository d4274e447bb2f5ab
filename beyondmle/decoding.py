"""Decoding: turning the shared model's next-token distributions into text.

Greedy search, temperature sampling, top-k (Fan et al. 2018, "Hierarchical Neural Story
Generation", §5.4) and nucleus / top-p sampling (Holtzman et al. 2020, "The Curious Case of
Neural Text Degeneration", §3.1). Decoding matters as much as training for the quality of
text, so the benchmark sweeps these settings over one trained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from beyondmle.model import GPT


@dataclass(frozen=True)
class DecodingConfig:
    """One decoding setting. `greedy` ignores the sampling knobs."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

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
    logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.size(-1):
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p is not None and config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # The nucleus is the smallest prefix whose mass reaches p: drop a token when the mass
        # before it already does. The most likely token always survives.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits: torch.Tensor, config: DecodingConfig, generator=None) -> torch.Tensor:
    """Pick the next token (B,) from the last-position logits (B, V)."""
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float(), config).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(
    model: GPT,
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
    cache = model.new_cache(B, prompts.size(1) + max_new_tokens) if use_cache else None
    logits = model(prompts, cache)[:, -1]  # (B, V)
    for step in range(max_new_tokens):
        token = next_token(logits, config, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        out = torch.cat([out, token[:, None]], dim=1)
        if step == max_new_tokens - 1 or (eos_id is not None and bool(finished.all())):
            break
        if use_cache:
            logits = model(token[:, None], cache)[:, -1]
        else:
            logits = model(torch.cat([prompts, out], dim=1))[:, -1]
    model.train(was_training)
    rows = out.tolist()
    if eos_id is None:
        return rows
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]
