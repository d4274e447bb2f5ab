"""Likelihood metrics: perplexity, bits per byte and the NLL of human continuations.

One definition throughout. The held-out split is one token stream (documents joined by
`<eos>`). Every token after the first is scored exactly once, with as much left context as the
model's window allows: windows of `block_size` tokens advance by `stride`, and each window
scores only the tokens that no earlier window scored (the sliding-window evaluation of
Press et al. 2021, "Shortformer", §3; stride = block_size gives disjoint blocks).

- NLL = the sum of −ln p(token | context) over the scored tokens, in nats.
- Perplexity per token = exp(NLL / scored tokens).
- Perplexity per word = exp(NLL / words), words = whitespace words + one `<eos>` per document,
  Mikolov et al.'s PTB convention; on PTB's word-level vocabulary it differs from the per-token
  value only by the one unscored first token.
- Bits per byte = NLL / (ln 2 · UTF-8 bytes of the scored text), which does not depend on the
  tokenizer (Gao et al. 2020, "The Pile", §4.1).
The first token of the stream has no context and is not scored; its share of words and bytes is
negligible and is kept, so that the per-word and per-byte figures cover the whole split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Teacher-forced passes materialise (batch, T, V) logits; small batches keep them in cache,
# which on CPU was ~4x faster than 64 windows at a time (PTB, 10k vocabulary).
LIKELIHOOD_BATCH = 8


@dataclass(frozen=True)
class Likelihood:
    """Summed NLL (nats) over `tokens` scored tokens, with the split's words and bytes."""

    nll: float
    tokens: int
    words: int | None = None
    bytes: int | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def perplexity_per_word(self) -> float | None:
        return None if not self.words else math.exp(self.nll / self.words)

    @property
    def bits_per_byte(self) -> float | None:
        return None if not self.bytes else self.nll / (math.log(2) * self.bytes)


def sliding_windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored position) of each window; targets are positions 1..n-1."""
    out, scored_to, start = [], 1, 0
    while scored_to < n:
        end = min(start + block_size + 1, n)  # inputs start..end-2, targets start+1..end-1
        out.append((start, end, scored_to))
        scored_to = end
        start += stride
    return out


@dataclass(frozen=True)
class StreamScores:
    """A sliding-window pass over a token stream: its likelihood and, when asked for, the
    model's argmax prediction of every token but the first (n - 1,), each made with the context
    its NLL was scored with."""

    likelihood: Likelihood
    predictions: torch.Tensor | None = None


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokens: list[int] | torch.Tensor,
    block_size: int,
    *,
    stride: int | None = None,
    words: int | None = None,
    num_bytes: int | None = None,
    batch_size: int = 32,
) -> Likelihood:
    """Score a held-out token stream with `model`: a model with the model interface
    (`beyondmle.api.CausalLM`), or any module mapping ids (B, T) to logits (B, T, V).

    `stride` defaults to block_size // 2, so every token but those of the first window sees at
    least half a window of context.
    """
    return score_stream(
        model,
        tokens,
        block_size,
        stride=stride,
        words=words,
        num_bytes=num_bytes,
        batch_size=batch_size,
    ).likelihood


@torch.no_grad()
def score_stream(
    model: torch.nn.Module,
    tokens: list[int] | torch.Tensor,
    block_size: int,
    *,
    stride: int | None = None,
    words: int | None = None,
    num_bytes: int | None = None,
    batch_size: int = 32,
    predictions: bool = False,
) -> StreamScores:
    """`perplexity`'s pass, optionally also returning the argmax predictions: one forward pass
    then serves both the likelihood and the next-token repetition metrics."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    n = tokens.numel()
    if n < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    stride = max(1, block_size // 2) if stride is None else stride
    if not 0 < stride <= block_size:
        raise ValueError(f"stride must be in (0, block_size={block_size}], got {stride}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, scored, argmax = 0.0, 0, []
    windows = sliding_windows(n, block_size, stride)
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        width = max(end - start for start, end, _ in group)
        inputs = torch.zeros(len(group), width - 1, dtype=torch.long)
        targets = torch.full((len(group), width - 1), -100, dtype=torch.long)
        for row, (start, end, first) in enumerate(group):
            inputs[row, : end - start - 1] = tokens[start : end - 1]
            keep = slice(first - start - 1, end - start - 1)
            targets[row, keep] = tokens[first:end]
        count = int((targets != -100).sum())
        inputs, targets = inputs.to(device), targets.to(device)
        if predictions:
            group_nll, group_argmax = _summed_nll_and_argmax(model, inputs, targets)
            argmax.append(group_argmax.cpu())
        else:
            group_nll = _summed_nll(model, inputs, targets, count)
        nll += group_nll
        scored += count
    model.train(was_training)
    likelihood = Likelihood(nll=nll, tokens=scored, words=words, bytes=num_bytes)
    return StreamScores(likelihood, torch.cat(argmax) if predictions else None)


def _summed_nll(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, count: int
) -> float:
    """Summed NLL of the `count` targets (B, T) that are not -100.

    A model with the interface fuses its output projection with the cross-entropy and skips
    ignored positions, so the half of each window that only gives context (default stride)
    costs no logits; the values are those of the logits path (a test pins them).
    """
    if hasattr(model, "next_token_loss"):
        return model.next_token_loss(model.hidden_states(inputs), targets).item() * count
    logits = model(inputs).float()
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum"
    ).item()


# Scored positions per output-projection chunk: bounds the logits held at once (V floats each).
LOGITS_CHUNK = 1024


def _summed_nll_and_argmax(
    model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """Summed NLL of the targets (B, T) that are not -100, and the argmax prediction at each of
    them (row by row, in order). Logits are formed only at scored positions, in chunks, as the
    fused loss forms them: the same single output projection, with the argmax read off it."""
    keep = targets != -100
    wanted = targets[keep]
    if hasattr(model, "hidden_states"):
        hidden = model.hidden_states(inputs)[keep]  # (k, C)
        chunks = (
            model.logits(hidden[s : s + LOGITS_CHUNK]).float()
            for s in range(0, hidden.size(0), LOGITS_CHUNK)
        )
    else:
        chunks = iter([model(inputs)[keep].float()])
    nll, argmax, start = 0.0, [], 0
    for logits in chunks:
        stop = start + logits.size(0)
        nll += F.cross_entropy(logits, wanted[start:stop], reduction="sum").item()
        argmax.append(logits.argmax(-1))
        start = stop
    return nll, torch.cat(argmax)


@dataclass(frozen=True)
class Continuations:
    """A teacher-forced pass over prompt + human continuation: the NLL of the continuations
    (`likelihood`), each row's summed NLL (N,) and the argmax next-token predictions (N, m)."""

    likelihood: Likelihood
    row_nll: torch.Tensor
    predictions: torch.Tensor


@torch.no_grad()
def continuation_scores(
    model: torch.nn.Module, prompts: torch.Tensor, continuations: torch.Tensor, batch_size: int = 64
) -> Continuations:
    """Teacher-forced pass over prompt + human continuation: the NLL of the continuations given
    their prompts, per row and in total, and the model's argmax prediction at each
    continuation position (N, m)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = prompts.size(1)
    rows, predictions = [], []
    for i in range(0, prompts.size(0), batch_size):
        seq = torch.cat([prompts[i : i + batch_size], continuations[i : i + batch_size]], 1)
        seq = seq.to(device)
        logits = model(seq[:, :-1]).float()[:, k - 1 :]  # predictions of the continuation
        target = seq[:, k:]
        nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (b, m)
        rows.append(nll.sum(dim=1).double().cpu())
        predictions.append(logits.argmax(-1).cpu())
    model.train(was_training)
    row_nll = torch.cat(rows)
    total = Likelihood(nll=float(row_nll.sum()), tokens=continuations.numel())
    return Continuations(total, row_nll, torch.cat(predictions))
