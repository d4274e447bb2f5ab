"""What the report knows about metrics: display names, which direction is better, which
metrics depend on the decoding, number formats. All of it comes from the results database's
`metric_info` table, which the evaluation writes from each metric's own declaration, so a newly
registered metric is named and ranked without a line of report code. A metric the database
says nothing of (a results directory from before schema version 2) is shown under its own name,
unranked."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class MetricInfo:
    name: str
    display: str
    higher_is_better: bool | None  # None: no direction (e.g. Zipf's coefficient)
    per_decoding: bool
    format: str = ""  # a Python format spec; '' lets the report choose


_KNOWN: dict[str, MetricInfo] = {}


def from_table(table: pd.DataFrame) -> list[MetricInfo]:
    """The rows of the `metric_info` table, in the order they were written."""
    out = []
    for row in table.itertuples(index=False):
        higher = None if pd.isna(row.higher_is_better) else bool(row.higher_is_better)
        out.append(
            MetricInfo(row.metric, row.display, higher, bool(row.per_decoding), row.format or "")
        )
    return out


@contextmanager
def using(infos: Iterable[MetricInfo]):
    """Make `infos` what `info`, `display` and `metric_order` know while a report is built."""
    saved = dict(_KNOWN)
    _KNOWN.clear()
    _KNOWN.update((m.name, m) for m in infos)
    try:
        yield
    finally:
        _KNOWN.clear()
        _KNOWN.update(saved)


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


def known() -> dict[str, MetricInfo]:
    return dict(_KNOWN)


def info(metric: str) -> MetricInfo:
    """The metric's description; an unknown metric gets its own name and no direction."""
    return _KNOWN.get(metric, MetricInfo(metric, metric, None, True))


def display(metric: str) -> str:
    m = info(metric)
    if m.higher_is_better is None:
        return m.display
    return f"{m.display} {'↑' if m.higher_is_better else '↓'}"


def metric_order(metrics) -> list[str]:
    """Known metrics in the order their metrics declared them, then unknown ones
    alphabetically."""
    present = set(metrics)
    ordered = [name for name in _KNOWN if name in present]
    return ordered + sorted(present - set(ordered))
