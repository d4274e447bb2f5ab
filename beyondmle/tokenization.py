"""Tokenizers: PTB's fixed word vocabulary, and a byte-level BPE for the user's own text.

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
        eos = self.eos_id
        pieces, run = [], []
        for i in ids:
            if i == eos:
                pieces.append(self.hf.decode(run) + "\n")
                run = []
            else:
                run.append(i)
        pieces.append(self.hf.decode(run))
        return "".join(pieces)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": self.hf.to_str()})


def tokenizer_from_json(text: str) -> Tokenizer:
    data = json.loads(text)
    if data["kind"] == WordTokenizer.kind:
        return WordTokenizer(data["words"], data["unk"])
    if data["kind"] == BPETokenizer.kind:
        return BPETokenizer(HFTokenizer.from_str(data["tokenizer"]))
    raise ValueError(f"unknown tokenizer kind {data['kind']!r}")
