"""An on-disk cache of sentence features, keyed by the featurization and the text.

MAUVE and the Fréchet embedding distance compare distributions of sentence features; the human
side is the same for every cell and decoding, so it is computed once and read back after. Every
vector is keyed by the featurizer's name, version and output-changing options and by the text,
so a cached vector is never reused for a different featurization.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from beyondmle.paths import atomic_save_array


class Featurization(Protocol):
    """What the cache needs of a featurizer (`beyondmle.api.Featurizer`)."""

    name: str
    version: str
    dim: int
    output_options: Mapping[str, object]

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _empty_features(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)


def _featurization_id(featurizer: Featurization) -> list[object]:
    return [featurizer.name, featurizer.version, dict(featurizer.output_options)]


def _digest(payload: object) -> str:
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


def feature_key(featurizer: Featurization, text: str) -> str:
    """sha256 (hex) of the featurizer's name, version, output-changing options and the text."""
    return _digest([*_featurization_id(featurizer), text])


def _store_dir(featurizer: Featurization, cache_dir: str | os.PathLike[str]) -> Path:
    """One folder per featurization, so a lookup only scans shards that can match."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", featurizer.name)
    return Path(cache_dir) / f"{safe_name}-{_digest(_featurization_id(featurizer))[:16]}"


def _shard_paths(store: Path, shard_id: str) -> tuple[Path, Path]:
    return store / f"{shard_id}.keys.npy", store / f"{shard_id}.features.npy"


def _write_shard(store: Path, keys: list[str], features: np.ndarray) -> None:
    """Save one shard: features first, then keys, whose presence marks the shard complete."""
    store.mkdir(parents=True, exist_ok=True)
    keys_path, features_path = _shard_paths(store, uuid.uuid4().hex)
    atomic_save_array(features_path, features)
    atomic_save_array(keys_path, np.array([key.encode("ascii") for key in keys], dtype="S64"))


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
    featurizer: Featurization, texts: Sequence[str], cache_dir: str | os.PathLike[str]
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
