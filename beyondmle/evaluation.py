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
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from beyondmle.api import (
    DEFAULT_FEATURIZER,
    FEATURIZERS,
    METRICS,
    CausalLM,
    Corpus,
    EvalInputs,
    Metric,
    Problem,
    Settings,
    get_featurizer,
    get_metric,
    setting,
)
from beyondmle.data import prompt_continuation_pairs
from beyondmle.decoding import DecodingConfig, generate
from beyondmle.feature_cache import cached_encode
from beyondmle.metrics.resampling import prompt_resamples
from beyondmle.paths import atomic_write_text, default_cache_dir

DEFAULT_METRICS = (
    "perplexity",
    "continuation",
    "repetition",
    "distinct",
    "self_bleu",
    "seq_rep",
    "entropy",
    "zipf",
    "mauve",
    "fed",
)

PERPLEXITY_SPLITS = ("valid", "test")


@dataclass(frozen=True)
class MetricRow:
    """One value, as the results database stores it."""

    decoding: str
    metric: str
    value: float | None
    fingerprint: str
    warning: str | None = None
    replicates: tuple[float, ...] | None = None


@dataclass(frozen=True)
class FingerprintRow:
    """What a fingerprint stands for."""

    fingerprint: str
    metric: str
    version: str
    settings: dict


@dataclass(frozen=True)
class MetricInfoRow:
    """What a stored metric value means (from its `Output`), for the report."""

    metric: str
    group: str
    display: str
    higher_is_better: bool | None
    per_decoding: bool
    format: str


def metric_info(names: list[str]) -> list[MetricInfoRow]:
    """The meaning of every value the named metric groups yield."""
    rows = []
    for name in names:
        metric = get_metric(name)
        for out in metric.outputs:
            rows.append(
                MetricInfoRow(
                    out.name,
                    name,
                    out.display,
                    out.higher_is_better,
                    metric.per_decoding,
                    out.format,
                )
            )
    return rows


@dataclass(frozen=True)
class EvaluationConfig(Settings):
    """The spec's `[evaluation]` table.

    Prompts are the first `num_samples` windows of the test split (`prompt_tokens` +
    `continuation_tokens` each); Self-BLEU uses a `self_bleu_samples` subset drawn with
    `sample_seed`; `rep_window` and `eval_stride` default to the model's context and half of it.
    `featurizer` (for MAUVE and FED) defaults to the corpus's own (`Corpus.featurizer`), else
    MiniLM. `perplexity_splits` names the held-out splits scored for perplexity: each costs a
    pass over its whole split, and a preset short of time may keep only "test" (training still
    logs the validation NLL on its first blocks).
    """

    prompt_tokens: int = setting(20, ge=1)
    continuation_tokens: int = setting(40, ge=1)
    num_samples: int = setting(1000, ge=1)
    self_bleu_samples: int = setting(1000, ge=2)
    sample_seed: int = 0
    metrics: list[str] = setting(default_factory=lambda: list(DEFAULT_METRICS), min_len=1)
    featurizer: str | None = None
    mauve_seeds: list[int] = setting(default_factory=lambda: [0, 1, 2], min_len=1)
    mauve_scaling: float = setting(5.0, gt=0.0)
    rep_window: int = setting(128, ge=1)
    eval_stride: int | None = setting(None, ge=1)
    perplexity_splits: list[str] = setting(
        default_factory=lambda: list(PERPLEXITY_SPLITS), min_len=1
    )
    batch_size: int = setting(64, ge=1)
    feature_cache: str | None = None
    bootstrap_replicates: int = setting(200, ge=0)

    def cross_checks(self) -> list[Problem]:
        problems = [
            Problem("metrics", f"registered metrics ({', '.join(METRICS.names())})", name)
            for name in self.metrics
            if name not in METRICS
        ]
        splits = self.perplexity_splits
        if any(s not in PERPLEXITY_SPLITS for s in splits) or len(set(splits)) != len(splits):
            expected = f"distinct splits among {', '.join(PERPLEXITY_SPLITS)}"
            problems.append(Problem("perplexity_splits", expected, splits))
        if self.featurizer is not None and self.featurizer not in FEATURIZERS:
            expected = f"a registered featurizer ({', '.join(FEATURIZERS.names())})"
            problems.append(Problem("featurizer", expected, self.featurizer))
        return problems

    def fingerprint(self) -> str:
        """Names the evaluation steps, so changed settings re-evaluate a trained model. An
        unset featurizer counts as the default's name, as before the corpus could name one, so
        results evaluated then stay valid (the corpus is part of every cell's id, and each
        metric's own fingerprint records the featurizer it actually used). Likewise the default
        `perplexity_splits`, added later, leaves the fingerprint as it was."""
        data = asdict(self)
        data["featurizer"] = data["featurizer"] or DEFAULT_FEATURIZER
        if data["perplexity_splits"] == list(PERPLEXITY_SPLITS):
            del data["perplexity_splits"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of a tokenizer: metric values under another tokenizer never compare."""
    return hashlib.sha256(tokenizer.to_json().encode()).hexdigest()[:12]


@dataclass
class PreferenceInputs:
    """What the preference metrics need in a run with preferences: the reference policy (None
    for the base itself), the proxy and gold rewards, the held-out pairs, and the reward
    model's cell id (part of those metrics' fingerprints)."""

    reference: CausalLM | None
    reward: object
    gold: object
    heldout_pairs: object
    reward_id: str


@dataclass
class Evaluator:
    """Evaluates one trained model on one corpus under one evaluation config; metrics whose
    inputs this cell lacks (a reference for the base itself, a reward model in a run without
    preferences, an oracle on a corpus without one) are left out."""

    model: CausalLM
    corpus: Corpus
    config: EvaluationConfig
    preferences: PreferenceInputs | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        pairs = prompt_continuation_pairs(
            self.corpus.stream("test"), cfg.prompt_tokens, cfg.continuation_tokens, cfg.num_samples
        )
        self.prompts = pairs.prompts
        self.references = pairs.continuations.tolist()
        self.block_size = self.model.info.context_length
        tokenizer_hash = tokenizer_fingerprint(self.corpus.tokenizer)
        self.featurizer = cfg.featurizer or self.corpus.featurizer or DEFAULT_FEATURIZER
        self.settings = {
            **asdict(cfg),
            "featurizer": self.featurizer,
            "diversity_units": self.corpus.diversity_units,
            "tokenizer": tokenizer_hash,
            "block_size": self.block_size,
            "reward_model": self.preferences.reward_id if self.preferences else None,
        }
        self.metrics = [m for m in (get_metric(name) for name in cfg.metrics) if self._can(m)]
        self.shared: dict = {}  # intermediates the metrics share for this model (EvalInputs)
        # The same prompt resamples in every cell (seeded by sample_seed): replicate r of two
        # objectives scores the same prompts, so their differences are paired.
        self.resamples = (
            prompt_resamples(len(self.references), cfg.bootstrap_replicates, cfg.sample_seed)
            if cfg.bootstrap_replicates and self.references
            else None
        )

    def _can(self, metric: Metric) -> bool:
        if "oracle" in metric.needs and getattr(self.corpus, "oracle", None) is None:
            return False  # a corpus without a known truth, in a spec that mixes corpora
        p = self.preferences
        if "reward" in metric.needs and p is None:
            return False
        return "reference" not in metric.needs or (p is not None and p.reference is not None)

    def _with_preferences(self, inputs: EvalInputs) -> EvalInputs:
        if self.preferences is not None:
            p = self.preferences
            inputs.reference, inputs.reward, inputs.gold = p.reference, p.reward, p.gold
            inputs.heldout_pairs = p.heldout_pairs
        return inputs

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
                metric.output(value.name)  # every value must be declared, so it has a meaning
                rows.append(
                    MetricRow(
                        decoding, value.name, value.value, fp, value.warning, value.replicates
                    )
                )
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
            resamples=self.resamples,
            oracle=getattr(self.corpus, "oracle", None),
            bos=self.corpus.tokenizer.eos_id,
            shared=self.shared,
        )
        return self._rows(metrics, "", self._with_preferences(inputs))

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
            resamples=self.resamples,
            decoding=decoding,
            bos=self.corpus.tokenizer.eos_id,
            shared=self.shared,
        )
        if self.corpus.diversity_units == "characters":
            decode = self.corpus.tokenizer.decode
            inputs.units = [[ord(c) for c in decode(s) if not c.isspace()] for s in samples]
        if any("model" in m.needs or "oracle" in m.needs for m in metrics):
            inputs.model = self.model
            inputs.oracle = getattr(self.corpus, "oracle", None)
        if any("features" in m.needs for m in metrics):
            # MAUVE collapses when the two sides differ in length (Pillutla et al. 2021, §5):
            # each human continuation is cut to the length of the generation it is compared to.
            self._fit_featurizer()
            references = [ref[: len(s)] for ref, s in zip(self.references, samples, strict=True)]
            inputs.p_features = self._features(references)
            inputs.q_features = self._features(samples)
        return self._rows(metrics, decoding.label, self._with_preferences(inputs))

    def _fit_featurizer(self) -> None:
        """A featurizer that learns from data (`fit`) learns from human text only, and not from
        the human side it is then compared on: the validation split's continuations, the same
        for every decoding and cell. (Fitted on the test references themselves, their features
        would be in-sample and the samples' not: two halves of PTB's test text then scored
        MAUVE 0.925 against 0.966 with a fit on validation text.)"""
        featurizer = _featurizer(self.featurizer)
        if hasattr(featurizer, "fit"):
            cfg = self.config
            valid = prompt_continuation_pairs(
                self.corpus.stream("valid"),
                cfg.prompt_tokens,
                cfg.continuation_tokens,
                cfg.num_samples,
            )
            featurizer.fit([self.corpus.tokenizer.decode(r) for r in valid.continuations.tolist()])

    def _features(self, token_lists: list[list[int]]):
        """Sentence features, cached on disk by text, so the human side costs nothing after the
        first decoding and the first cell."""
        texts = [self.corpus.tokenizer.decode(t) for t in token_lists]
        cache = self.config.feature_cache or default_cache_dir() / "features"
        return cached_encode(_featurizer(self.featurizer), texts, Path(cache))


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
