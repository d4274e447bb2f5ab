"""Tokenizers: PTB's fixed word vocabulary, a byte-level BPE for the user's own text, and a
pretrained model's own tokenizer.

Both reserve the same special tokens, so every objective works on every corpus:
`<eos>` ends a document (it stands for the newline between documents when text is decoded),
`<mask>` and `<sep>` serve denoising objectives, `<pad>` pads.
A tokenizer serializes to one JSON string, stored inside every checkpoint, so a checkpoint
alone is enough to generate text.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS, MASK, SEP, PAD = "<eos>", "<mask>", "<sep>", "<pad>"
SPECIAL_TOKENS = (EOS, MASK, SEP, PAD)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens every tokenizer reserves, for objectives that need them."""

    eos: int
    mask: int
    sep: int
    pad: int


class Tokenizer(ABC):
    """Text to token ids and back. Documents are encoded without `<eos>`; callers append it."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def token_id(self, token: str) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def to_json(self) -> str: ...

    @property
    def eos_id(self) -> int:
        return self.token_id(EOS)

    @property
    def special(self) -> SpecialTokens:
        return SpecialTokens(
            eos=self.token_id(EOS),
            mask=self.token_id(MASK),
            sep=self.token_id(SEP),
            pad=self.token_id(PAD),
        )


class WordTokenizer(Tokenizer):
    """A closed word vocabulary split on whitespace, as in Mikolov et al.'s PTB: words outside
    the vocabulary become `<unk>`, so perplexities compare with published PTB numbers."""

    kind = "word"

    def __init__(self, words: list[str], unk: str = "<unk>") -> None:
        vocab = list(dict.fromkeys([*SPECIAL_TOKENS, *words]))
        if unk not in vocab:
            vocab.append(unk)
        self.words = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.unk = unk
        self.unk_id = self.index[unk]

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def token_id(self, token: str) -> int:
        return self.index[token]

    def encode(self, text: str) -> list[int]:
        index, unk = self.index, self.unk_id
        return [index.get(w, unk) for w in text.split()]

    def decode(self, ids: list[int]) -> str:
        eos = self.eos_id
        out: list[str] = []
        for i in ids:
            if i == eos:
                out.append("\n")
            else:
                if out and out[-1] != "\n":
                    out.append(" ")
                out.append(self.words[i])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "words": self.words, "unk": self.unk})


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Radford et al. 2019, §2.2) from Hugging Face `tokenizers`: any UTF-8 text
    round-trips exactly, so bits per byte are exact."""

    kind = "bpe"

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        # A user's text that spells out "<eos>" is text, not a document boundary.
        self.hf.encode_special_tokens = True

    @classmethod
    def train(cls, documents: list[str], vocab_size: int) -> BPETokenizer:
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(documents, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(token)
        return i

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return _decode_documents(self.hf, ids, self.eos_id)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": self.hf.to_str()})


class PretrainedTokenizer(Tokenizer):
    """A pretrained model's own tokenizer (its `tokenizer.json`, a Hugging Face `tokenizers`
    file), so a corpus re-tokenized with it is scored as the model was trained to read it.

    Its end-of-sequence token (from `tokenizer_config.json`'s `eos_token`, else `config.json`'s
    `eos_token_id`) separates documents. Where the tokenizer has no mask, separator or padding
    token of its own, distinct from its EOS and from each other (many pad with their EOS),
    `<mask>`, `<sep>` and `<pad>` are added as special tokens (the model's embedding grows to
    match; their rows are new), so every objective works on every model. Documents are
    encoded without the tokenizer's own additions (a Llama BOS): the stream adds `<eos>` only.
    """

    kind = "pretrained"

    def __init__(self, hf: HFTokenizer, eos: str, roles: dict[str, str]) -> None:
        self.hf = hf
        self.hf.encode_special_tokens = True  # text that spells a special token is text
        self.eos = eos
        self.roles = dict(roles)  # mask / sep / pad -> token string
        missing = [t for t in (eos, *self.roles.values()) if hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"the tokenizer has no token {missing[0]!r}")

    @classmethod
    def from_directory(cls, path) -> PretrainedTokenizer:
        """The tokenizer of a model directory (`tokenizer.json`, `tokenizer_config.json`,
        `config.json`); raises ValueError naming the file when there is no usable EOS."""
        from pathlib import Path

        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"{file}: a model directory needs its tokenizer as tokenizer.json")
        hf = HFTokenizer.from_file(str(file))
        settings = _json_or_empty(path / "tokenizer_config.json")
        eos = _token_text(settings.get("eos_token"))
        if eos is None:
            eos_id = _json_or_empty(path / "config.json").get("eos_token_id")
            eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
            eos = hf.id_to_token(eos_id) if isinstance(eos_id, int) else None
        if eos is None or hf.token_to_id(eos) is None:
            raise ValueError(
                f"{path}: the tokenizer has no end-of-sequence token (tokenizer_config.json "
                "'eos_token' or config.json 'eos_token_id'); documents need one between them"
            )
        roles: dict[str, str] = {}
        for role, default in (("mask", MASK), ("sep", SEP), ("pad", PAD)):
            token = _token_text(settings.get(f"{role}_token"))
            taken = {eos, *roles.values()}  # a pad that is also the EOS would hide every EOS
            if token is None or hf.token_to_id(token) is None or token in taken:
                token = default
                hf.add_special_tokens([token])
            roles[role] = token
        return cls(hf, eos, roles)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(token)
        return i

    @property
    def eos_id(self) -> int:
        return self.token_id(self.eos)

    @property
    def special(self) -> SpecialTokens:
        return SpecialTokens(
            eos=self.eos_id,
            mask=self.token_id(self.roles["mask"]),
            sep=self.token_id(self.roles["sep"]),
            pad=self.token_id(self.roles["pad"]),
        )

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return _decode_documents(self.hf, ids, self.eos_id, skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps(
            {"kind": self.kind, "tokenizer": self.hf.to_str(), "eos": self.eos, "roles": self.roles}
        )


def _decode_documents(
    hf: HFTokenizer, ids: list[int], eos: int, skip_special_tokens: bool = True
) -> str:
    """Text of ids, each `<eos>` (document boundary) written as a newline."""
    pieces, run = [], []
    for i in ids:
        if i == eos:
            pieces.append(hf.decode(run, skip_special_tokens=skip_special_tokens) + "\n")
            run = []
        else:
            run.append(i)
    pieces.append(hf.decode(run, skip_special_tokens=skip_special_tokens))
    return "".join(pieces)


def _json_or_empty(path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def tokenizer_from_json(text: str) -> Tokenizer:
    data = json.loads(text)
    if data["kind"] == WordTokenizer.kind:
        return WordTokenizer(data["words"], data["unk"])
    if data["kind"] == BPETokenizer.kind:
        return BPETokenizer(HFTokenizer.from_str(data["tokenizer"]))
    if data["kind"] == PretrainedTokenizer.kind:
        hf = HFTokenizer.from_str(data["tokenizer"])
        return PretrainedTokenizer(hf, data["eos"], data["roles"])
    raise ValueError(f"unknown tokenizer kind {data['kind']!r}")
