"""The one decoder-only Transformer that every objective trains.

A GPT in the style of Radford et al. 2019 ("Language Models are Unsupervised Multitask
Learners", §2.3): pre-LayerNorm blocks, causal self-attention, learned absolute positions and
input/output embeddings tied as in Press & Wolf 2017 ("Using the Output Embedding to Improve
Language Models", §3). Objectives never subclass it: they differ in the loss, not the model,
so every trained model is scored the same way.

Shapes in comments: B batch, T time, C width (n_embd), H heads, D head width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from beyondmle.fused_loss import IGNORE, linear_cross_entropy
from beyondmle.settings import Problem, Settings, setting


@dataclass(frozen=True)
class ModelInfo:
    """What objectives may know of the model's shape (`beyondmle.api.ModelInfo`)."""

    vocab_size: int
    context_length: int
    width: int
    heads: int


@dataclass(frozen=True)
class ModelConfig(Settings):
    """Size of the shared model; the spec's `[model]` table maps onto these fields.

    `hf` names a local Hugging Face model directory instead (`beyondmle.hf_model`), or `gguf` a
    GGUF file (a path, or `package/file` inside an installed package), dequantized once into
    such a directory: that model is trained, with its own tokenizer, and of the fields here only
    `block_size` (the training and evaluation window, at most the model's context) applies; its
    shape and dropout are its own config's."""

    vocab_size: int = setting(10_000, ge=1)
    block_size: int = setting(128, ge=1)
    n_layer: int = setting(4, ge=1)
    n_head: int = setting(4, ge=1)
    n_embd: int = setting(256, ge=1)
    dropout: float = setting(0.1, ge=0.0, lt=1.0)
    bias: bool = True
    hf: str | None = None
    gguf: str | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.vocab_size, self.block_size, self.n_embd, self.n_head)

    def cross_checks(self) -> list[Problem]:
        if self.hf is not None and self.gguf is not None:
            return [Problem("gguf", "either hf or gguf, not both", self.gguf)]
        if self.gguf is not None:
            from beyondmle.hf_model import gguf_problems

            return [Problem("gguf", expected, self.gguf) for expected in gguf_problems(self.gguf)]
        if self.hf is not None:
            from beyondmle.hf_model import directory_problems

            return [Problem("hf", expected, self.hf) for expected in directory_problems(self)]
        if self.n_embd % self.n_head:
            return [Problem("n_embd", f"divisible by n_head={self.n_head}", self.n_embd)]
        return []

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Preallocated keys and values for incremental decoding, one pair of tensors per layer.

    Preallocating avoids a `torch.cat` per generated token, which dominates decoding time on
    CPU for small models.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype) -> None:
        if max_len > config.block_size:
            raise ValueError(
                f"prompt plus new tokens ({max_len}) exceed the model's context "
                f"block_size={config.block_size}"
            )
        head_dim = config.n_embd // config.n_head
        shape = (batch_size, config.n_head, max_len, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.empty_like(k) for k in self.keys]
        self.length = 0  # positions filled so far, identical in every layer

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store k, v (B, H, t, D) after the filled positions; return all keys and values so far."""
        start, stop = self.length, self.length + k.size(2)
        if stop > self.keys[layer].size(2):
            raise ValueError(
                f"the KV cache holds {self.keys[layer].size(2)} positions; "
                f"{stop} were asked for (make a larger cache)"
            )
        self.keys[layer][:, :, start:stop] = k
        self.values[layer][:, :, start:stop] = v
        return self.keys[layer][:, :, :stop], self.values[layer][:, :, :stop]


def _backends(device: torch.device) -> list[SDPBackend]:
    """On CPU the plain (math) attention trains ~6% faster end to end than the fused CPU flash
    kernel at these sizes (its backward dominates: benchmarks/speed.py); elsewhere let PyTorch
    pick its fastest kernel."""
    if device.type == "cpu":
        return [SDPBackend.MATH]
    return [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ]


def random_keep(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A boolean mask of `shape`, each entry True with probability 1 - p (to 1/65536).

    On CPU, `torch.bernoulli_` (behind `F.dropout`) draws one float per entry and made dropout
    a fifth of a training step (4 x 256 model, PTB). Here one int64 draw gives three 16-bit
    uniforms: its top 16 bits are not used, because `random_()` keeps int64 values
    non-negative, so their highest bit is always 0. That is 3x faster for the same masks'
    law."""
    n = math.prod(shape)
    words = -(-n // 3)
    bits = torch.empty(words, dtype=torch.int64, device=device).random_()
    lanes = bits.view(torch.int16).view(words, 4)[:, :3].reshape(-1)[:n]  # uniform int16
    return (lanes >= round(p * 65536) - 32768).view(shape)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (Srivastava et al. 2014): zero each entry with probability p and scale
    the rest by 1 / (1 - p). On CPU the mask comes from `random_keep`; elsewhere it is
    PyTorch's own fused kernel."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    return x * random_keep(x.shape, p, x.device) * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`nn.Dropout` with `dropout`'s faster CPU mask."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # q, k, v: (B, H, T, D)
        if cache is None and self.training and self.dropout > 0 and x.device.type == "cpu":
            # What the math kernel computes, with the cheaper dropout mask.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            y = dropout(att, self.dropout, True).to(v.dtype) @ v  # (B, H, T, D)
        elif cache is None:
            with sdpa_kernel(_backends(x.device)):
                y = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
                )
        else:
            past = cache.length
            k, v = (t.to(q.dtype) for t in cache.append(layer, k, v))  # (B, H, past + T, D)
            # Query i sits at absolute position past + i and may see keys 0..past + i.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


@dataclass
class Compute:
    """What a model has computed since it was made (or `reset`): matrix-multiply FLOPs of the
    forward and backward passes, token positions run forward, and positions decoded with the
    KV cache after a prompt (generated tokens fed back).

    FLOPs are counted as each call runs, from the shapes it was given, so extra passes,
    generation and a discriminator's passes are all in: per layer and position 24·d² for the
    weights (the qkv, output and MLP projections) and 4·d·keys for attention, 2·d·V per
    projected position for the output layer; a pass with gradients adds twice its forward FLOPs
    when the weights train and once when only its inputs need gradients (Kaplan et al. 2020,
    "Scaling Laws for Neural Language Models", §2.1: C ≈ 6N per trained token)."""

    flops: float = 0.0
    forward_tokens: int = 0
    generated_tokens: int = 0

    def reset(self) -> None:
        self.flops, self.forward_tokens, self.generated_tokens = 0.0, 0, 0


def backward_factor(module: nn.Module, x: torch.Tensor) -> int:
    """2: weights and inputs get gradients; 1: only the inputs do; 0: no backward pass."""
    if not torch.is_grad_enabled():
        return 0
    if any(p.requires_grad for p in module.parameters()):
        return 2
    return 1 if x.requires_grad else 0


class GPT(nn.Module):
    """Decoder-only Transformer language model: token ids in, next-token logits out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.compute = Compute()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        self.apply(self._init_weights)
        # GPT-2 §2.3: scale residual projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, exclude_positions: bool = True) -> int:
        """Parameters, tied weights once; positions excluded by nanoGPT's convention."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if exclude_positions else n

    # The model interface (beyondmle.api.CausalLM): all that objectives and metrics may use.

    @property
    def info(self) -> ModelInfo:
        return self.config.info

    def token_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Token vectors (B, T, C) of ids (B, T), or the expected embedding of distributions
        over the vocabulary (B, T, V); positions are added by `hidden_states`."""
        if x.dtype in (torch.long, torch.int32, torch.int64):
            return self.wte(x)
        if x.size(-1) != self.config.vocab_size:
            raise ValueError(
                f"distributions must have the vocabulary ({self.config.vocab_size}) as their "
                f"last dimension, got shape {tuple(x.shape)}"
            )
        self._count_projection(x[..., 0].numel(), backward_factor(self, x))
        return x.to(self.wte.weight.dtype) @ self.wte.weight

    def hidden_states(
        self,
        ids: torch.Tensor | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C) of token ids (B, T) or token vectors (B, T, C);
        positions continue after the cache, which is filled with these T positions."""
        if (ids is None) == (embeddings is None):
            raise ValueError("give exactly one of ids and embeddings")
        x = self._add_positions(self.wte(ids) if embeddings is None else embeddings, cache)
        self._count_blocks(x, 0 if cache is None else cache.length)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += x.size(1)
        return self.ln_f(x)

    def _count_blocks(self, x: torch.Tensor, past: int) -> None:
        B, T, C = x.shape
        keys = past + T  # the attention matrix is formed whole, then masked
        forward = self.config.n_layer * B * T * (24 * C * C + 4 * C * keys)
        self.compute.flops += forward * (1 + backward_factor(self, x))
        self.compute.forward_tokens += B * T

    def _count_projection(self, rows: int, backward: int) -> None:
        self.compute.flops += (
            2 * rows * self.config.n_embd * self.config.vocab_size * (1 + backward)
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of hidden states (..., C)."""
        self._count_projection(hidden[..., 0].numel(), backward_factor(self, hidden))
        return self.lm_head(hidden)

    def next_token_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE
    ) -> torch.Tensor:
        """Mean cross-entropy of targets (...) under `logits(hidden)` (..., C), fused with the
        output projection (no logits tensor is formed); `ignore_index` targets are skipped."""
        if ignore_index != IGNORE:
            targets = targets.masked_fill(targets == ignore_index, IGNORE)
        self._count_projection(int((targets != IGNORE).sum()), backward_factor(self, hidden))
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.size(-1)), self.lm_head.weight, targets.reshape(-1)
        )

    def step(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append ids (B, t) to the cache; return their next-token logits (B, t, V)."""
        if cache.length:
            self.compute.generated_tokens += ids.numel()
        return self.logits(self.hidden_states(ids, cache=cache))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids idx (B, T)."""
        return self.logits(self.hidden_states(idx))

    def _add_positions(self, token_emb: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Token vectors (B, T, C) plus positions (continuing after the cache), then dropout."""
        start = 0 if cache is None else cache.length
        T = token_emb.size(1)
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}"
            )
        pos = torch.arange(start, start + T, device=token_emb.device)
        return self.drop(token_emb + self.wpe(pos))

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` positions."""
        weight = self.wte.weight
        return KVCache(self.config, batch_size, max_len, weight.device, dtype or weight.dtype)
