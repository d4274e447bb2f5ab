"""The model interface: everything objectives, metrics and decoding may ask of the shared model.

Objectives differ in the loss, never in the model, so they reach the model only through these
methods; any causal language model that implements them (the shared GPT of `beyondmle.model`,
a wrapper around a Hugging Face `transformers` model) trains under every objective, decodes and
is scored unchanged.

Shapes: B batch, T time, C the model's width, V the vocabulary.

- `info`: vocabulary size, context length, width and attention heads (`ModelInfo`).
- `token_embeddings(x)`: input vectors (B, T, C) of token ids (B, T), or of distributions over
  the vocabulary (B, T, V) as their expected embedding, for soft (mixed) inputs such as
  scheduled sampling's softmax mixture or a Gumbel-softmax sample. Positions are not added.
- `hidden_states(ids=None, *, embeddings=None, cache=None)`: final hidden states (B, T, C) of
  token ids, or of token vectors from `token_embeddings`; positions continue after the cache.
- `logits(hidden)`: next-token logits (..., V) of chosen hidden states (..., C); select the
  positions first, and only those are projected.
- `next_token_loss(hidden, targets, ignore_index=-100)`: the mean cross-entropy of targets
  (...) under the logits of hidden (..., C), fused with the output projection, so no (B, T, V)
  tensor is formed; targets equal to `ignore_index` cost nothing.
- `new_cache(batch_size, max_len)` and `step(ids, cache)`: KV-cached decoding; `step` appends
  ids (B, t) to the cache and returns their logits (B, t, V).

Implementations are `torch.nn.Module`s (parameters, `train()` / `eval()`, devices).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from beyondmle.fused_loss import IGNORE as IGNORE_INDEX
from beyondmle.model import ModelInfo

__all__ = ["IGNORE_INDEX", "CausalLM", "ModelInfo"]


@runtime_checkable
class CausalLM(Protocol):
    """See the module docstring."""

    @property
    def info(self) -> ModelInfo: ...

    def token_embeddings(self, x: torch.Tensor) -> torch.Tensor: ...

    def hidden_states(
        self,
        ids: torch.Tensor | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def next_token_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX
    ) -> torch.Tensor: ...

    def new_cache(self, batch_size: int, max_len: int) -> Any: ...

    def step(self, ids: torch.Tensor, cache: Any) -> torch.Tensor: ...
