"""The statistics of the report: bootstrap confidence intervals over seeds, paired comparisons,
the area under a quality-diversity frontier and Spearman's rank correlation.

Everything here is pure numpy/scipy on small arrays and deterministic for a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

N_RESAMPLES = 10_000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its percentile-bootstrap interval; `low`/`high` are NaN when
    there are fewer than two seeds (an interval from one value would be a fake)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)


def _clean(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def bootstrap_ci(
    values: Iterable[float],
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Estimate:
    """The mean of `values` (non-finite ones dropped) with a percentile bootstrap interval.

    Resamples the values with replacement `n_resamples` times (numpy's PCG64 seeded with
    `seed`), takes each resample's mean and returns the (1 - confidence) / 2 and
    (1 + confidence) / 2 percentiles of those means. The interval always lies within
    [min, max] of the values; identical values give a zero-width interval at that value.
    """
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    # Rounding in the resample means may step a hair outside the data: clip it back.
    lo, hi = float(x.min()), float(x.max())
    return Estimate(mean, min(max(float(low), lo), hi), min(max(float(high), lo), hi), n)


@dataclass(frozen=True)
class PairedComparison:
    """`objective - baseline` paired by seed: the mean difference with its bootstrap interval,
    and on how many of the paired seeds the objective is strictly better."""

    diff: Estimate
    n_better: int
    n: int

    @property
    def share_better(self) -> float:
        return self.n_better / self.n if self.n else math.nan


def paired_difference(
    objective: Mapping[int, float],
    baseline: Mapping[int, float],
    higher_is_better: bool | None,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> PairedComparison:
    """Compare two objectives seed by seed: only seeds present (with finite values) on both
    sides count. Better means a higher difference if `higher_is_better`, lower if not; with no
    direction (None) no seed counts as better."""
    seeds = sorted(
        s
        for s in set(objective) & set(baseline)
        if math.isfinite(objective[s]) and math.isfinite(baseline[s])
    )
    diffs = np.array([objective[s] - baseline[s] for s in seeds], dtype=float)
    if higher_is_better is None:
        n_better = 0
    elif higher_is_better:
        n_better = int((diffs > 0).sum())
    else:
        n_better = int((diffs < 0).sum())
    return PairedComparison(
        bootstrap_ci(diffs, n_resamples, confidence, seed), n_better, len(seeds)
    )


def normalise(values: Iterable[float], low: float, high: float) -> np.ndarray:
    """Min-max scale onto [0, 1] with a common range; a zero-width range maps to 1."""
    x = np.asarray(list(values), dtype=float)
    if not high > low:
        return np.ones_like(x)
    return np.clip((x - low) / (high - low), 0.0, 1.0)


def pareto_mask(diversity: Iterable[float], quality: Iterable[float]) -> np.ndarray:
    """True for the Pareto-optimal points when both axes are better higher: no other point is
    at least as good on both axes and strictly better on one. Duplicates both survive."""
    d = np.asarray(list(diversity), dtype=float)
    q = np.asarray(list(quality), dtype=float)
    keep = np.ones(len(d), dtype=bool)
    for i in range(len(d)):
        dominated = (d >= d[i]) & (q >= q[i]) & ((d > d[i]) | (q > q[i]))
        keep[i] = not dominated.any()
    return keep


def frontier_area(diversity: Iterable[float], quality: Iterable[float]) -> float:
    """The area under a quality-diversity frontier, on axes already normalised to [0, 1].

    Keeps the Pareto-optimal points (`pareto_mask`), sorts them by diversity and integrates
    with the trapezoid rule the piecewise-linear curve through them, closed by a flat segment
    from diversity 0 at the quality of the least diverse point and a vertical drop to quality 0
    at the most diverse point. That is the area of the part of the unit square the frontier
    dominates (straight lines between points): 0 to 1, higher is better; one point (d, q)
    gives d * q. NaN points are dropped; no point gives NaN.
    """
    d = np.asarray(list(diversity), dtype=float)
    q = np.asarray(list(quality), dtype=float)
    ok = np.isfinite(d) & np.isfinite(q)
    d, q = d[ok], q[ok]
    if len(d) == 0:
        return math.nan
    keep = pareto_mask(d, q)
    order = np.lexsort((-q[keep], d[keep]))
    fd, fq = d[keep][order], q[keep][order]
    xs = np.concatenate([[0.0], fd])
    ys = np.concatenate([[fq[0]], fq])
    return float(np.trapezoid(ys, xs))


@dataclass(frozen=True)
class Correlation:
    rho: float
    p_value: float
    n: int


def spearman(x: Iterable[float], y: Iterable[float]) -> Correlation:
    """Spearman's rank correlation over the pairs where both values are finite. NaN when there
    are fewer than three pairs or either side is constant."""
    a = np.asarray(list(x), dtype=float)
    b = np.asarray(list(y), dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = len(a)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return Correlation(math.nan, math.nan, n)
    result = scipy_stats.spearmanr(a, b)
    return Correlation(float(result.statistic), float(result.pvalue), n)
