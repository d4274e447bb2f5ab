"""The evaluation pass: from a trained model to metric values and sample files.

Once per trained model: likelihood on valid and test, and the teacher-forced continuation
metrics. Once per decoding setting: continuations of the held-out prompts (saved as JSONL with
prompt, generation and human reference), then the sample metrics on them. `beyondmle run` and
`beyondmle evaluate` both call this code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import beyondmle.metrics.builtin  # noqa: F401  (registers the built-in metrics)
from beyondmle.corpora import Corpus, default_cache_dir
from beyondmle.data import prompt_continuation_pairs
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.metrics.featurizers import cached_encode, get_featurizer
from beyondmle.metrics.registry import EvalInputs, Metric, available_metrics, get_metric
from beyondmle.model import GPT
from beyondmle.results import FingerprintRow, MetricRow, atomic_write_text

DEFAULT_METRICS = (
    "perplexity",
    "continuation",
    "distinct",
    "self_bleu",
    "seq_rep",
    "entropy",
    "zipf",
    "mauve",
    "fed",
)


@dataclass(frozen=True)
class EvaluationConfig:
    """The spec's `[evaluation]` table.

    Prompts are the first `num_samples` windows of the test split (`prompt_tokens` +
    `continuation_tokens` each); Self-BLEU uses a `self_bleu_samples` subset drawn with
    `sample_seed`; `rep_window` and `eval_stride` default to the model's context and half of it.
    """

    prompt_tokens: int = 20
    continuation_tokens: int = 40
    num_samples: int = 1000
    self_bleu_samples: int = 1000
    sample_seed: int = 0
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    featurizer: str = "minilm"
    mauve_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    mauve_scaling: float = 5.0
    rep_window: int | None = None
    eval_stride: int | None = None
    batch_size: int = 64
    feature_cache: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "continuation_tokens", "num_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.self_bleu_samples < 2:
            raise ValueError(f"self_bleu_samples must be >= 2, got {self.self_bleu_samples}")
        unknown = sorted(set(self.metrics) - set(available_metrics()))
        if unknown:
            raise ValueError(
                f"unknown metrics {unknown}; available: {', '.join(available_metrics())}"
            )

    def fingerprint(self) -> str:
        """Names the evaluation steps, so changed settings re-evaluate a trained model."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class Evaluator:
    """Evaluates one trained model on one corpus under one evaluation config."""

    model: GPT
    corpus: Corpus
    config: EvaluationConfig

    def __post_init__(self) -> None:
        cfg = self.config
        pairs = prompt_continuation_pairs(
            self.corpus.stream("test"), cfg.prompt_tokens, cfg.continuation_tokens, cfg.num_samples
        )
        self.prompts = pairs.prompts
        self.references = pairs.continuations.tolist()
        self.block_size = self.model.config.block_size
        tokenizer_hash = hashlib.sha256(self.corpus.tokenizer.to_json().encode()).hexdigest()[:12]
        self.settings = {
            **asdict(cfg),
            "tokenizer": tokenizer_hash,
            "block_size": self.block_size,
        }
        self.metrics = [get_metric(name) for name in cfg.metrics]

    def _rows(self, metrics: list[Metric], decoding: str, inputs: EvalInputs):
        rows, fingerprints = [], []
        for metric in metrics:
            fp = metric.fingerprint(self.settings)
            fingerprints.append(
                FingerprintRow(
                    fp, metric.name, metric.version, metric.fingerprint_settings(self.settings)
                )
            )
            for value in metric.compute(inputs):
                rows.append(MetricRow(decoding, value.name, value.value, fp, value.warning))
        return rows, fingerprints

    def model_metrics(self) -> tuple[list[MetricRow], list[FingerprintRow]]:
        """Metrics of the model itself, independent of decoding (stored with decoding '')."""
        metrics = [m for m in self.metrics if not m.per_decoding]
        inputs = EvalInputs(
            settings=self.settings,
            model=self.model,
            heldout=self.corpus,
            block_size=self.block_size,
            prompts=self.prompts.tolist(),
            references=self.references,
        )
        return self._rows(metrics, "", inputs)

    def generate(self, decoding: DecodingConfig, seed: int) -> list[list[int]]:
        """Continuations of every prompt, exactly `continuation_tokens` long."""
        generator = torch.Generator().manual_seed(_decoding_seed(seed, decoding.label))
        out: list[list[int]] = []
        bs = self.config.batch_size
        for i in range(0, self.prompts.size(0), bs):
            out += generate(
                self.model,
                self.prompts[i : i + bs],
                self.config.continuation_tokens,
                decoding,
                generator=generator,
            )
        return out

    def write_samples(self, path: Path, samples: list[list[int]]) -> None:
        decode = self.corpus.tokenizer.decode
        lines = [
            json.dumps(
                {
                    "index": i,
                    "prompt": decode(prompt),
                    "generation": decode(sample),
                    "reference": decode(reference),
                }
            )
            for i, (prompt, sample, reference) in enumerate(
                zip(self.prompts.tolist(), samples, self.references, strict=True)
            )
        ]
        atomic_write_text(path, "\n".join(lines) + "\n")

    def sample_metrics(
        self, decoding: DecodingConfig, samples: list[list[int]]
    ) -> tuple[list[MetricRow], list[FingerprintRow]]:
        metrics = [m for m in self.metrics if m.per_decoding]
        inputs = EvalInputs(
            settings=self.settings,
            block_size=self.block_size,
            prompts=self.prompts.tolist(),
            references=self.references,
            samples=samples,
        )
        if any("features" in m.needs for m in metrics):
            # MAUVE collapses when the two sides differ in length (Pillutla et al. 2021, §5):
            # each human continuation is cut to the length of the generation it is compared to.
            references = [ref[: len(s)] for ref, s in zip(self.references, samples, strict=True)]
            inputs.p_features = self._features(references)
            inputs.q_features = self._features(samples)
        return self._rows(metrics, decoding.label, inputs)

    def _features(self, token_lists: list[list[int]]):
        """Sentence features, cached on disk by text, so the human side costs nothing after the
        first decoding and the first cell."""
        texts = [self.corpus.tokenizer.decode(t) for t in token_lists]
        cache = self.config.feature_cache or default_cache_dir() / "features"
        return cached_encode(_featurizer(self.config.featurizer), texts, Path(cache))


_FEATURIZERS: dict[str, object] = {}


def _featurizer(name: str):
    """One featurizer per process: loading MiniLM takes seconds, and every cell needs it."""
    if name not in _FEATURIZERS:
        _FEATURIZERS[name] = get_featurizer(name)
    return _FEATURIZERS[name]


def _decoding_seed(seed: int, label: str) -> int:
    digest = hashlib.sha256(f"{seed}:{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def sample_file_name(label: str) -> str:
    """A file name for a decoding label: `top_p=0.9` -> `top_p-0.9.jsonl`."""
    return label.replace("=", "-").replace(",", "_").replace(os.sep, "_") + ".jsonl"
