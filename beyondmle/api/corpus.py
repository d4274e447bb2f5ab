"""The corpus contract: where text comes from, split into train / valid / test documents and
tokenized.

A corpus plugin is a `CorpusSource` subclass with a `Settings` dataclass (the spec's
`[[corpus]]` keys besides `name`, validated like an objective's) and a `load()` that returns a
`Corpus`. Every check on the input happens in `Settings` or in `load`, before any training
starts; bad input raises `CorpusError` naming the file or setting and what was expected.

    @register_corpus("my_corpus")
    class MyCorpus(CorpusSource):
        Settings = MySettings

        def load(self) -> Corpus:
            ...
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from beyondmle.api.registry import Registry
from beyondmle.paths import atomic_save_array, default_cache_dir
from beyondmle.settings import Settings, SettingsError
from beyondmle.tokenization import Tokenizer

SPLITS = ("train", "valid", "test")
CHARACTER_LANGUAGES = frozenset({"zh", "ja"})  # written without spaces between words

__all__ = [
    "CHARACTER_LANGUAGES",
    "CORPORA",
    "SPLITS",
    "Corpus",
    "CorpusError",
    "CorpusSettings",
    "CorpusSource",
    "available_corpora",
    "get_corpus",
    "load_corpus",
    "register_corpus",
]


class CorpusError(ValueError):
    """Bad corpus input: names the file or setting and what was expected."""


@dataclass
class Corpus:
    """Documents per split plus the tokenizer. A document is one line of PTB, or one
    paragraph / line of a user's file; documents are joined with `<eos>` into token streams.

    `language` (an ISO 639-1 code) decides what the diversity metrics count: words or tokens,
    or characters for languages written without spaces (`CHARACTER_LANGUAGES`), so the choice
    is the corpus's, not the user's. `featurizer` is the sentence featurizer the distributional
    metrics use unless the spec's `[evaluation]` names one (None: the suite's default, MiniLM,
    an English model).

    `stream_cache`, where set, is a directory that keeps each split's token stream on disk,
    keyed by the tokenizer and the split's documents, so a stream is tokenized once per machine
    rather than once per cell process."""

    name: str
    tokenizer: Tokenizer
    documents: dict[str, list[str]]
    word_level: bool
    language: str = "en"
    featurizer: str | None = None
    stream_cache: Path | None = None
    _streams: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def stream(self, split: str) -> list[int]:
        """All documents of a split, each followed by `<eos>`, as one token list."""
        if split not in self._streams:
            path = self._stream_path(split) if self.stream_cache is not None else None
            if path is not None and path.exists():
                self._streams[split] = np.load(path, allow_pickle=False).tolist()
            else:
                self._streams[split] = self._tokenize(split)
                if path is not None:
                    atomic_save_array(path, np.asarray(self._streams[split], dtype=np.int64))
        return self._streams[split]

    def _tokenize(self, split: str) -> list[int]:
        eos = self.tokenizer.eos_id
        tokens: list[int] = []
        for doc in self.documents[split]:
            tokens.extend(self.tokenizer.encode(doc))
            tokens.append(eos)
        return tokens

    def _stream_path(self, split: str) -> Path:
        """`<stream_cache>/<corpus>-<split>-<key>.npy`; the key hashes the tokenizer (its JSON)
        and the split's documents, so another tokenizer or other text never reads this file."""
        digest = hashlib.sha256(self.tokenizer.to_json().encode("utf-8"))
        for doc in self.documents[split]:
            digest.update(doc.encode("utf-8"))
            digest.update(b"\n")
        return Path(self.stream_cache) / f"{self.name}-{split}-{digest.hexdigest()[:20]}.npy"

    def retokenized(self, tokenizer: Tokenizer, cache: Path | None = None) -> Corpus:
        """The same documents read by another tokenizer (a pretrained model's own), so the model
        is trained and scored on text as it was trained to read it. The streams are cached on
        disk (`cache`, default `<cache dir>/streams`): a large pretrained tokenizer reads PTB in
        tens of seconds, and every cell of a run needs the same streams."""
        cache = cache if cache is not None else default_cache_dir() / "streams"
        return dataclasses.replace(self, tokenizer=tokenizer, stream_cache=cache, _streams={})

    def num_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split as the model sees it: documents plus one newline each."""
        return sum(len(doc.encode("utf-8")) + 1 for doc in self.documents[split])

    def num_characters(self, split: str) -> int:
        """Characters other than whitespace, plus one `<eos>` per document."""
        return sum(sum(not c.isspace() for c in doc) + 1 for doc in self.documents[split])

    @property
    def diversity_units(self) -> str:
        """What distinct-n and Self-BLEU count: `characters` or `tokens`."""
        return "characters" if self.language in CHARACTER_LANGUAGES else "tokens"

    def num_words(self, split: str) -> int:
        """Whitespace-separated words plus one `<eos>` per document (Mikolov's PTB convention)."""
        return sum(len(doc.split()) + 1 for doc in self.documents[split])


@dataclass(frozen=True)
class CorpusSettings(Settings):
    """Settings every corpus has (none yet); subclasses add their own fields with defaults."""


class CorpusSource:
    """Base class of corpus plugins; see the module docstring."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[CorpusSettings]] = CorpusSettings

    def __init__(self, settings: CorpusSettings) -> None:
        self.settings = settings

    def load(self) -> Corpus:
        raise NotImplementedError(f"corpus {self.name!r} must implement load()")

    @classmethod
    def check_with(cls, settings: CorpusSettings, evaluation: object, model: dict) -> list:
        """Problems of these settings together with the spec's `[evaluation]` and `[model]`
        (`beyondmle.api.Problem`s), found before anything loads or trains; none by default."""
        return []


def _check_corpus(name: str, cls: object) -> type[CorpusSource]:
    if not (isinstance(cls, type) and issubclass(cls, CorpusSource)):
        raise TypeError(f"corpus {name!r}: {cls!r} is not a subclass of CorpusSource")
    if not (dataclasses.is_dataclass(cls.Settings) and issubclass(cls.Settings, CorpusSettings)):
        raise TypeError(f"corpus {name!r}: Settings must be a dataclass of CorpusSettings")
    if cls.load is CorpusSource.load:
        raise TypeError(f"corpus {name!r} must implement load()")
    cls.name = name
    return cls


CORPORA: Registry[type[CorpusSource]] = Registry("corpus", "beyondmle.corpora", _check_corpus)


def register_corpus(name: str) -> Callable:
    """Class decorator: register a `CorpusSource` subclass under `name`."""
    return CORPORA.register(name)


def get_corpus(name: str) -> type[CorpusSource]:
    return CORPORA.get(name)


def available_corpora() -> list[str]:
    return CORPORA.names()


def load_corpus(name: str, **settings: object) -> Corpus:
    """Load a registered corpus with its settings (as a spec's `[[corpus]]` table gives
    them); invalid settings raise `SettingsError`, bad input `CorpusError`."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known: {', '.join(CORPORA.names())}")
    cls = get_corpus(name)
    try:
        parsed = cls.Settings(**settings)
    except SettingsError as e:
        raise CorpusError(f"corpus {name!r}: {e}") from None
    return cls(parsed).load()
