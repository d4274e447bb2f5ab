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

from beyondmle.fused_loss import linear_cross_entropy


@dataclass(frozen=True)
class ModelConfig:
    """Size of the shared model; the spec's `[model]` table maps onto these fields."""

    vocab_size: int = 10_000
    block_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.1
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")

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


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # q, k, v: (B, H, T, D)
        if cache is None:
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
        self.dropout = nn.Dropout(config.dropout)

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


class GPT(nn.Module):
    """Decoder-only Transformer language model: token ids in, next-token logits out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
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

    def embed(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token plus position embeddings (B, T, C); positions continue after the cache."""
        return self.embed_vectors(self.wte(idx), cache)

    def embed_vectors(self, token_emb: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Add positions and embedding dropout to token vectors (B, T, C). Objectives with soft
        inputs (an expected embedding, a Gumbel-softmax sample) pass their own vectors here."""
        start = 0 if cache is None else cache.length
        T = token_emb.size(1)
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds block_size={self.config.block_size}"
            )
        pos = torch.arange(start, start + T, device=token_emb.device)
        return self.drop(token_emb + self.wpe(pos))

    def forward_hidden(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run the blocks on embeddings x (B, T, C); return the final hidden states (B, T, C),
        which `lm_head` turns into logits."""
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += x.size(1)
        return self.ln_f(x)

    def forward_embeddings(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run the blocks on embeddings x (B, T, C) and return logits (B, T, V).

        Objectives that feed soft inputs (scheduled sampling's embedding mixture, a Gumbel-softmax
        generator) call this with their own embeddings; `embed` builds the usual ones.
        """
        return self.lm_head(self.forward_hidden(x, cache))

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits (B, T, V) for token ids idx (B, T)."""
        return self.forward_embeddings(self.embed(idx, cache), cache)

    def nll(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token NLL of targets (B, T) given idx (B, T), -100 ignored; equal to
        cross-entropy on `self(idx)` but without materialising the (B, T, V) logits."""
        hidden = self.forward_hidden(self.embed(idx)).flatten(0, 1)
        return linear_cross_entropy(hidden, self.lm_head.weight, targets.flatten())

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        weight = self.wte.weight
        return KVCache(self.config, batch_size, max_len, weight.device, dtype or weight.dtype)
