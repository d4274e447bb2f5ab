"""What the report knows about metrics: display names, which direction is better, and which
metrics depend on the decoding. Metrics not listed here are still shown, unranked."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    display: str
    higher_is_better: bool | None  # None: no direction (e.g. Zipf's coefficient)
    per_decoding: bool


_INFOS = [
    MetricInfo("ppl_test", "test perplexity", False, False),
    MetricInfo("ppl_valid", "valid perplexity", False, False),
    MetricInfo("ppl_word_test", "word-level test perplexity", False, False),
    MetricInfo("ppl_word_valid", "word-level valid perplexity", False, False),
    MetricInfo("bpb_test", "test bits per byte", False, False),
    MetricInfo("bpb_valid", "valid bits per byte", False, False),
    MetricInfo("nll_continuation", "continuation NLL", False, False),
    MetricInfo("rep", "rep", False, False),
    MetricInfo("wrep", "wrep", False, False),
    MetricInfo("uniq", "uniq", True, False),
    MetricInfo("mauve", "MAUVE", True, True),
    MetricInfo("mauve_std", "MAUVE std", None, True),
    MetricInfo("fed", "FED", False, True),
    MetricInfo("distinct_1", "distinct-1", True, True),
    MetricInfo("distinct_2", "distinct-2", True, True),
    MetricInfo("distinct_3", "distinct-3", True, True),
    MetricInfo("distinct_4", "distinct-4", True, True),
    MetricInfo("self_bleu_4", "Self-BLEU-4", False, True),
    MetricInfo("seq_rep_4", "seq-rep-4", False, True),
    MetricInfo("entropy_4", "entropy-4", True, True),
    MetricInfo("zipf", "Zipf coefficient", None, True),
]

METRICS: dict[str, MetricInfo] = {m.name: m for m in _INFOS}

# The headline table, in column order: likelihood, quality, diversity, repetition.
HEADLINE_METRICS = [
    "ppl_test",
    "bpb_test",
    "mauve",
    "fed",
    "distinct_4",
    "self_bleu_4",
    "seq_rep_4",
]

# Metrics whose rank correlation with perplexity measures the likelihood-quality gap.
GAP_METRICS = ["mauve", "fed", "distinct_4", "self_bleu_4", "seq_rep_4"]

# Preference order for the axes of the gap chart.
LIKELIHOOD_PREFERENCE = ["ppl_test", "ppl_valid", "bpb_test", "bpb_valid", "nll_continuation"]
QUALITY_PREFERENCE = ["mauve", "fed", "seq_rep_4", "distinct_4", "self_bleu_4"]

BASELINE_OBJECTIVE = "mle"


def info(metric: str) -> MetricInfo:
    """The metric's description; an unknown metric gets its own name and no direction."""
    return METRICS.get(metric, MetricInfo(metric, metric, None, True))


def display(metric: str) -> str:
    m = info(metric)
    if m.higher_is_better is None:
        return m.display
    return f"{m.display} {'↑' if m.higher_is_better else '↓'}"


def metric_order(metrics) -> list[str]:
    """Known metrics in catalogue order, then unknown ones alphabetically."""
    known = [m.name for m in _INFOS if m.name in set(metrics)]
    return known + sorted(set(metrics) - set(known))
