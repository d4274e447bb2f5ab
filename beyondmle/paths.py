"""Files written whole or not at all, and the cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary sibling, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    """`$BEYONDMLE_CACHE`, or ~/.cache/beyondmle: tokenizers, features, probes."""
    return Path(os.environ.get("BEYONDMLE_CACHE", Path.home() / ".cache" / "beyondmle"))
