"""Files written whole or not at all, and the cache directory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary sibling, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_array(path: Path, array: np.ndarray) -> None:
    """Write a `.npy` file whole or not at all (no pickles): a uniquely named temporary
    sibling, fsync, then rename, so concurrent writers and readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def default_cache_dir() -> Path:
    """`$BEYONDMLE_CACHE`, or ~/.cache/beyondmle: tokenizers, features, probes."""
    return Path(os.environ.get("BEYONDMLE_CACHE", Path.home() / ".cache" / "beyondmle"))
