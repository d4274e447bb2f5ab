"""The metrics layer: plain functions with plain inputs (the public API, stable), and a
registry through which the evaluation pass computes them with fingerprints.

    from beyondmle.metrics import distinct_n, self_bleu, seq_rep_n, mauve, fed, perplexity
"""

from beyondmle.metrics import builtin as _builtin  # noqa: F401  (registers the metrics)
from beyondmle.metrics.distributional import MauveResult, fed, mauve
from beyondmle.metrics.diversity import distinct_n, ngram_entropy, self_bleu, zipf_coefficient
from beyondmle.metrics.likelihood import Likelihood, continuation_scores, perplexity
from beyondmle.metrics.registry import (
    EvalInputs,
    Metric,
    MetricValue,
    available_metrics,
    fingerprint,
    get_metric,
    register_metric,
)
from beyondmle.metrics.repetition import next_token_repetition, seq_rep_n

__all__ = [
    "EvalInputs",
    "Likelihood",
    "MauveResult",
    "Metric",
    "MetricValue",
    "available_metrics",
    "continuation_scores",
    "distinct_n",
    "fed",
    "fingerprint",
    "get_metric",
    "mauve",
    "next_token_repetition",
    "ngram_entropy",
    "perplexity",
    "register_metric",
    "self_bleu",
    "seq_rep_n",
    "zipf_coefficient",
]
