"""The statistics of the report: intervals over seeds (Student-t) and over seeds and prompts
(hierarchical), paired comparisons with a paired test, the area under a quality-diversity
frontier and Spearman's rank correlation.

Everything here is pure numpy/scipy on small arrays and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95

OVER_SEEDS = "seeds"
OVER_SEEDS_AND_PROMPTS = "seeds and prompts"


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval and what the interval is over; `low`/`high` are NaN with one
    seed (the spread between seeds cannot be known from one), and `p_value` is the paired
    test's for a difference (NaN otherwise)."""

    mean: float
    low: float
    high: float
    n: int
    over: str = OVER_SEEDS
    p_value: float = math.nan

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)


def _clean(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    return array[np.isfinite(array)]


def seed_interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Estimate:
    """The mean over seeds with its Student-t interval, mean ± t(n-1) · s / √n.

    With a handful of seeds the t quantile is large (12.7 at n = 2), and so the interval is as
    wide as two seeds can honestly claim: a percentile bootstrap over 2 seeds can only return
    [min, max], which covers the mean half the time. Exact for normal seed-to-seed variation;
    `tests/test_intervals.py` simulates its coverage."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Estimate(mean, math.nan, math.nan, 1)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def hierarchical_interval(
    seed_values: Mapping[int, float],
    replicates: Mapping[int, np.ndarray],
    confidence: float = CONFIDENCE,
) -> Estimate:
    """The mean over seeds with an interval over seeds and prompts.

    Two sources of error: which seeds were trained, and which prompts the evaluation drew (all
    seeds share one prompt set, so its luck does not average out over seeds). The seed part is
    the Student-t term of `seed_interval`; the prompt part is the bootstrap variance, over the
    shared prompt resamples, of the seed-averaged metric (replicate r is the same prompts in
    every seed; `beyondmle.metrics.resampling`). Half-width
    sqrt(t(n-1)² · s²/n + z² · Var_r[mean over seeds of replicate r]). This is a two-level
    (hierarchical) bootstrap in which the seed level, with its few values, is replaced by its
    exact t form; its coverage is simulated in `tests/test_intervals.py`."""
    seeds = sorted(s for s in seed_values if s in replicates and math.isfinite(seed_values[s]))
    if len(seeds) < 2:
        return seed_interval([seed_values[s] for s in seeds])
    x = np.array([seed_values[s] for s in seeds], dtype=float)
    reps = np.vstack([np.asarray(replicates[s], dtype=float) for s in seeds])  # (n, R)
    reps = reps[:, np.isfinite(reps).all(axis=0)]
    n = len(x)
    mean = float(x.mean())
    if reps.shape[1] < 2:
        return seed_interval(x)
    t = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)
    z = scipy_stats.norm.ppf(0.5 + confidence / 2)
    var_seeds = x.var(ddof=1) / n
    var_prompts = reps.mean(axis=0).var(ddof=1)
    half = math.sqrt(t**2 * var_seeds + z**2 * var_prompts)
    return Estimate(mean, mean - half, mean + half, n, OVER_SEEDS_AND_PROMPTS)


def interval(
    seed_values: Mapping[int, float], replicates: Mapping[int, np.ndarray] | None = None
) -> Estimate:
    """`hierarchical_interval` where every seed has replicates, else `seed_interval`."""
    if replicates and all(s in replicates for s in seed_values):
        return hierarchical_interval(seed_values, replicates)
    return seed_interval(seed_values.values())


def _with_p_value(est: Estimate, confidence: float = CONFIDENCE) -> Estimate:
    """The paired test of 'no difference': t = mean / se with n - 1 degrees of freedom, se being
    the interval's half-width over the t quantile (conservative where prompts add to it)."""
    if not est.has_interval:
        return est
    half = (est.high - est.low) / 2
    se = half / scipy_stats.t.ppf(0.5 + confidence / 2, est.n - 1)
    if se == 0:
        p = 0.0 if est.mean != 0 else 1.0
    else:
        p = float(2 * scipy_stats.t.sf(abs(est.mean) / se, est.n - 1))
    return Estimate(est.mean, est.low, est.high, est.n, est.over, p)


@dataclass(frozen=True)
class PairedComparison:
    """`objective - baseline` paired by seed (and by prompt resample): the mean difference with
    its interval and paired test, and on how many paired seeds the objective is better."""

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
    objective_replicates: Mapping[int, np.ndarray] | None = None,
    baseline_replicates: Mapping[int, np.ndarray] | None = None,
) -> PairedComparison:
    """Compare two objectives seed by seed: only seeds present (with finite values) on both
    sides count; where both have replicates, replicate r minus replicate r (the same prompts)
    gives the prompt part of the interval. Better means a higher difference if
    `higher_is_better`, lower if not; with no direction (None) no seed counts as better."""
    seeds = sorted(
        s
        for s in set(objective) & set(baseline)
        if math.isfinite(objective[s]) and math.isfinite(baseline[s])
    )
    diffs = {s: objective[s] - baseline[s] for s in seeds}
    reps = None
    if objective_replicates and baseline_replicates:
        reps = {
            s: np.asarray(objective_replicates[s]) - np.asarray(baseline_replicates[s])
            for s in seeds
            if s in objective_replicates and s in baseline_replicates
        }
    values = np.array(list(diffs.values()), dtype=float)
    if higher_is_better is None:
        n_better = 0
    elif higher_is_better:
        n_better = int((values > 0).sum())
    else:
        n_better = int((values < 0).sum())
    return PairedComparison(_with_p_value(interval(diffs, reps)), n_better, len(seeds))


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
