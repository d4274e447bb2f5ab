"""A tiny text corpus the matrix tests train on: 400 lines over 40 words, deterministic."""

from pathlib import Path


def write_tiny_corpus(directory: Path) -> Path:
    """`directory/corpus.txt`: lines of 5 to 14 words, each line a different stride."""
    words = [f"w{i}" for i in range(40)]
    lines = [" ".join(words[(i * 7 + j) % 40] for j in range(5 + i % 10)) for i in range(400)]
    path = directory / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
