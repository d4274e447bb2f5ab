"""The `oracle` corpus: text sampled from a language model whose probabilities are known.

The oracle is a teacher trained here by MLE on a real corpus (its own settings: corpus, model
size, budget; trained once and cached by key, resumable), a checkpoint the user names, or a
mixture of K components with known weights (teachers on different corpora or parts of one,
random Transformers with a sharpness, as Texygen's random LSTM oracle, or checkpoints). Its
train, valid and test sets are sampled from it at a set size, sequence length, temperature and
seed, and cached by key with it. Students train on them as on any corpus: objectives see no
difference. Metrics against it are in `beyondmle.metrics.oracle`.

Each sampled sequence is `<eos>` followed by `sequence_length - 1` tokens; the splits are their
concatenations. With `sequence_length` = prompt_tokens + continuation_tokens, the evaluation's
windows are the oracle's sequences exactly, so every prompt and continuation is scored under
the law that produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from beyondmle.api import (
    SPLITS,
    Corpus,
    CorpusError,
    CorpusSettings,
    CorpusSource,
    Problem,
    load_corpus,
    register_corpus,
    setting,
)
from beyondmle.data import LanguageDataModule, derive_seed
from beyondmle.model import GPT, ModelConfig
from beyondmle.oracles import LMOracle, MixtureOracle, Oracle
from beyondmle.paths import default_cache_dir
from beyondmle.training import ObjectiveModule, TrainingConfig, build_trainer, load_model

COMPONENT_KINDS = ("teacher", "random", "checkpoint")
COMPONENT_KEYS = {
    "teacher": {"kind", "weight", "corpus", "part", "seed"},
    "random": {"kind", "weight", "sharpness", "seed"},
    "checkpoint": {"kind", "weight", "path", "temperature"},
}


@dataclass(frozen=True)
class OracleSettings(CorpusSettings):
    """The oracle and the samples drawn from it.

    One oracle: `checkpoint` (a `model.ckpt`), or else a teacher trained here by MLE on
    `teacher_corpus` with `teacher_layers`, `teacher_heads`, `teacher_width`, `teacher_context`,
    `teacher_dropout`, `teacher_budget_tokens`, `teacher_batch_size`, `teacher_lr`,
    `teacher_seed`; `temperature` sharpens or flattens it (the oracle is the teacher at that
    temperature). A mixture instead: `components`, a list of tables, each with a `weight` (the
    weights sum to 1) and a `kind`: `teacher` (`corpus`, `part` = [i, n]: trained on the
    documents i, i + n, ... of it; `seed`), `random` (a random Transformer of the teacher's
    size; `sharpness` = 1 / temperature, `seed`) or `checkpoint` (`path`, `temperature`).
    Samples: `train_sequences`, `valid_sequences`, `test_sequences` of `sequence_length` tokens
    each (the start token included), drawn with `seed`. Cached under `cache_dir`.
    """

    checkpoint: str | None = None
    teacher_corpus: str = "ptb"
    teacher_layers: int = setting(2, ge=1)
    teacher_heads: int = setting(4, ge=1)
    teacher_width: int = setting(128, ge=1)
    teacher_context: int = setting(64, ge=2)
    teacher_dropout: float = setting(0.1, ge=0.0, lt=1.0)
    teacher_budget_tokens: int = setting(1_000_000, ge=1)
    teacher_batch_size: int = setting(32, ge=1)
    teacher_lr: float = setting(3e-3, gt=0.0)
    teacher_seed: int = 0
    temperature: float = setting(1.0, gt=0.0)
    components: list[dict] = setting(default_factory=list)
    train_sequences: int = setting(10_000, ge=1)
    valid_sequences: int = setting(500, ge=1)
    test_sequences: int = setting(1_000, ge=1)
    sequence_length: int = setting(60, ge=2)
    seed: int = 0
    cache_dir: str | None = None

    def cross_checks(self) -> list[Problem]:
        problems = []
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            problems.append(
                Problem("checkpoint", f"a checkpoint file ({self.checkpoint} does not exist)")
            )
        if self.checkpoint is None and self.teacher_context < self.sequence_length:
            problems.append(
                Problem(
                    "teacher_context",
                    f"at least sequence_length = {self.sequence_length}: the oracle must "
                    "condition on a whole sequence",
                    self.teacher_context,
                )
            )
        if self.components:
            problems += self._component_problems()
        return problems

    def _component_problems(self) -> list[Problem]:
        problems = []
        weights = []
        for i, c in enumerate(self.components):
            where = f"components[{i}]"
            kind = c.get("kind")
            if kind not in COMPONENT_KINDS:
                expected = "one of " + ", ".join(repr(k) for k in COMPONENT_KINDS)
                problems.append(Problem(f"{where}.kind", expected, kind))
                continue
            for key in sorted(set(c) - COMPONENT_KEYS[kind]):
                known = ", ".join(sorted(COMPONENT_KEYS[kind]))
                problems.append(Problem(f"{where}.{key}", f"a known key ({known})", key))
            weight = c.get("weight")
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                problems.append(Problem(f"{where}.weight", "a number > 0", weight))
            else:
                weights.append(float(weight))
            if kind == "checkpoint" and not Path(str(c.get("path"))).is_file():
                problems.append(
                    Problem(f"{where}.path", f"a checkpoint file ({c.get('path')} does not exist)")
                )
            if kind == "teacher" and "part" in c:
                part = c["part"]
                ok = isinstance(part, list) and len(part) == 2 and 0 <= part[0] < part[1]
                if not ok:
                    problems.append(Problem(f"{where}.part", "[i, n] with 0 <= i < n", part))
        if weights and len(weights) == len(self.components) and abs(sum(weights) - 1) > 1e-6:
            problems.append(Problem("components", "weights that sum to 1", round(sum(weights), 6)))
        return problems

    def key(self) -> str:
        blob = json.dumps(
            {k: v for k, v in asdict(self).items() if k != "cache_dir"}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@register_corpus("oracle")
class OracleCorpus(CorpusSource):
    """Text sampled from an oracle whose probabilities are known; see the module docstring."""

    Settings = OracleSettings
    has_oracle = True  # its corpora carry `oracle`: metrics against a known truth apply

    @classmethod
    def check_with(cls, settings: OracleSettings, evaluation, model: dict) -> list[Problem]:
        """The evaluation's windows must be the oracle's sequences, or prompts and
        continuations would straddle two sequences drawn independently; and the student must
        read the oracle's tokens, since the oracle's probabilities are over its vocabulary (a
        pretrained model brings a tokenizer of its own)."""
        problems = []
        window = evaluation.prompt_tokens + evaluation.continuation_tokens
        if window != settings.sequence_length:
            problems.append(
                Problem(
                    "sequence_length",
                    f"evaluation.prompt_tokens + continuation_tokens = {window}, so that every "
                    "evaluation window is one oracle sequence",
                    settings.sequence_length,
                )
            )
        pretrained = model.get("hf") or model.get("gguf")
        if pretrained:
            problems.append(
                Problem(
                    "name",
                    "a corpus a pretrained model can read: the oracle's probabilities are over "
                    f"its own vocabulary, not the tokenizer of model {pretrained!r}",
                    "oracle",
                )
            )
        return problems

    def load(self) -> Corpus:
        s: OracleSettings = self.settings
        cache = Path(s.cache_dir) if s.cache_dir else default_cache_dir() / "oracles"
        teacher_corpus = load_corpus(s.teacher_corpus)
        oracle = build_oracle(s, teacher_corpus, cache)
        if oracle.context_length < s.sequence_length:
            raise CorpusError(
                f"corpus 'oracle': the oracle's context ({oracle.context_length} tokens) is "
                f"shorter than sequence_length = {s.sequence_length}"
            )
        tokenizer = teacher_corpus.tokenizer
        streams = sampled_streams(s, oracle, tokenizer.eos_id, cache)
        documents = {
            split: [tokenizer.decode(row[1:].tolist()) for row in streams[split]]
            for split in SPLITS
        }
        corpus = Corpus(
            "oracle",
            tokenizer,
            documents,
            word_level=teacher_corpus.word_level,
            language=teacher_corpus.language,
            featurizer=teacher_corpus.featurizer,
        )
        corpus._streams.update({split: streams[split].flatten().tolist() for split in SPLITS})
        corpus.oracle = oracle
        corpus.sequence_length = s.sequence_length
        return corpus


def sampled_streams(
    s: OracleSettings, oracle: Oracle, bos: int, cache: Path
) -> dict[str, np.ndarray]:
    """The splits' sequences (N, sequence_length), sampled once and cached by key."""
    path = cache / f"samples-{s.key()}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as data:
            return {split: data[split] for split in SPLITS}
    counts = {"train": s.train_sequences, "valid": s.valid_sequences, "test": s.test_sequences}
    out = {}
    for split in SPLITS:
        generator = torch.Generator().manual_seed(derive_seed(s.seed, f"oracle-{split}"))
        rows = [
            oracle.sample(min(256, counts[split] - i), s.sequence_length, bos, generator)
            for i in range(0, counts[split], 256)
        ]
        out[split] = torch.cat(rows).numpy().astype(np.int64)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def build_oracle(s: OracleSettings, teacher_corpus: Corpus, cache: Path) -> Oracle:
    if s.components:
        parts = [component(s, c, teacher_corpus, cache) for c in s.components]
        return MixtureOracle(parts, [float(c["weight"]) for c in s.components])
    if s.checkpoint is not None:
        return LMOracle(load_model(s.checkpoint)[0], s.temperature)
    return LMOracle(teacher(s, teacher_corpus, cache), s.temperature)


def component(s: OracleSettings, c: dict, teacher_corpus: Corpus, cache: Path) -> Oracle:
    if c["kind"] == "checkpoint":
        return LMOracle(load_model(c["path"])[0], float(c.get("temperature", 1.0)))
    if c["kind"] == "random":
        torch.manual_seed(derive_seed(int(c.get("seed", 0)), "random-oracle"))
        model = GPT(teacher_config(s, teacher_corpus.tokenizer.vocab_size, dropout=0.0))
        return LMOracle(model, 1.0 / float(c.get("sharpness", 1.0)))
    corpus = teacher_corpus if c.get("corpus", s.teacher_corpus) == s.teacher_corpus else None
    corpus = corpus or load_corpus(c["corpus"])
    if corpus.tokenizer.to_json() != teacher_corpus.tokenizer.to_json():
        raise CorpusError(
            f"corpus 'oracle': component corpus {c['corpus']!r} has another vocabulary than "
            f"{s.teacher_corpus!r}; mixture components must share one"
        )
    if "part" in c:
        corpus = part_of(corpus, *c["part"])
    seeded = replace(s, teacher_seed=int(c.get("seed", s.teacher_seed)))
    return LMOracle(teacher(seeded, corpus, cache, tag=json.dumps(c, sort_keys=True)), 1.0)


def part_of(corpus: Corpus, index: int, count: int) -> Corpus:
    """The documents index, index + count, ... of every split: one part of a corpus."""
    documents = {split: docs[index::count] for split, docs in corpus.documents.items()}
    return Corpus(
        f"{corpus.name}[{index}/{count}]",
        corpus.tokenizer,
        documents,
        corpus.word_level,
        language=corpus.language,
        featurizer=corpus.featurizer,
    )


def teacher_config(s: OracleSettings, vocab: int, dropout: float | None = None) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab,
        block_size=s.teacher_context,
        n_layer=s.teacher_layers,
        n_head=s.teacher_heads,
        n_embd=s.teacher_width,
        dropout=s.teacher_dropout if dropout is None else dropout,
    )


def teacher(s: OracleSettings, corpus: Corpus, cache: Path, tag: str = "") -> GPT:
    """A teacher trained by MLE on `corpus`, cached by key; an interrupted training resumes
    from its last checkpoint."""
    spec = {
        "corpus": corpus.name,
        "model": asdict(teacher_config(s, corpus.tokenizer.vocab_size)),
        "budget": s.teacher_budget_tokens,
        "batch": s.teacher_batch_size,
        "lr": s.teacher_lr,
        "seed": s.teacher_seed,
        "tag": tag,
    }
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    directory = cache / f"teacher-{key}"
    final = directory / "model.ckpt"
    if not final.exists():
        train_teacher(s, corpus, directory, spec["model"])
    return load_model(final)[0]


def train_teacher(s: OracleSettings, corpus: Corpus, directory: Path, model: dict) -> None:
    training = TrainingConfig(
        budget_tokens=s.teacher_budget_tokens,
        batch_size=s.teacher_batch_size,
        lr=s.teacher_lr,
        val_every_steps=10**6,
        checkpoint_every_steps=100,
    )
    torch.manual_seed(derive_seed(s.teacher_seed, "model-init"))
    module = ObjectiveModule(
        model_config=model,
        objective="mle",
        objective_settings={},
        training=asdict(training),
        special=asdict(corpus.tokenizer.special),
        tokenizer_json=corpus.tokenizer.to_json(),
        seed=s.teacher_seed,
    )
    data = LanguageDataModule(
        corpus,
        model["block_size"],
        training.batch_size,
        order_seed=derive_seed(s.teacher_seed, "data-order"),
    )
    trainer = build_trainer(training, directory, False, enable_progress_bar=False)
    last = directory / "checkpoints" / "last.ckpt"
    trainer.fit(module, data, ckpt_path=last if last.exists() else None, weights_only=True)
    if not module.budget_spent():
        raise CorpusError(f"corpus 'oracle': the teacher's training in {directory} was interrupted")
    trainer.save_checkpoint(directory / "model.ckpt", weights_only=True)
