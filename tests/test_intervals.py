"""The report's intervals hold their coverage at the seed counts the presets use (2, 3, 5):
simulated from known distributions, a nominal 95% interval must contain the true mean at least
93% of the time. Generation metrics are simulated as the evaluation makes them: per-prompt
values with a seed effect, a prompt effect shared by every seed (all seeds see one prompt set)
and noise, with replicates from the pipeline's own prompt resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from beyondmle.metrics.resampling import mean_replicates, prompt_resamples
from beyondmle.reports.stats import (
    OVER_SEEDS_AND_PROMPTS,
    hierarchical_interval,
    paired_difference,
    seed_interval,
)

SIMULATIONS = 1000
PROMPTS = 200
REPLICATES = 200
TRUE_MEAN = 1.0


def test_the_seed_interval_is_students_t_by_hand() -> None:
    est = seed_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert (est.mean, est.low, est.high) == pytest.approx((2.0, 2.0 - half, 2.0 + half))


def test_one_seed_gives_no_interval() -> None:
    est = seed_interval([0.7])
    assert est.n == 1 and math.isnan(est.low) and math.isnan(est.high)
    assert not est.has_interval


@pytest.mark.parametrize("n", [2, 3, 5])
def test_seed_intervals_cover_at_least_93_percent(n: int) -> None:
    rng = np.random.default_rng(n)
    hits = 0
    for _ in range(SIMULATIONS):
        est = seed_interval(rng.normal(TRUE_MEAN, 0.3, n))
        hits += est.low <= TRUE_MEAN <= est.high
    assert hits / SIMULATIONS >= 0.93


def simulate_cells(rng, n: int, seed_sd: float, prompt_sd: float, noise_sd: float):
    """Per-prompt values (n, PROMPTS) of one metric for n seeds, sharing the prompt effects."""
    prompts = rng.normal(0.0, prompt_sd, PROMPTS)
    seeds = rng.normal(0.0, seed_sd, n)
    return TRUE_MEAN + seeds[:, None] + prompts[None, :] + rng.normal(0.0, noise_sd, (n, PROMPTS))


def values_and_replicates(per_prompt: np.ndarray, counts: np.ndarray):
    values = {s: float(row.mean()) for s, row in enumerate(per_prompt)}
    replicates = {s: mean_replicates(row, counts) for s, row in enumerate(per_prompt)}
    return values, replicates


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize(
    ("seed_sd", "prompt_sd", "noise_sd"),
    [(1.0, 0.1, 1.0), (0.05, 1.0, 1.0), (0.3, 0.3, 1.0)],
    ids=["seeds dominate", "prompts dominate", "mixed"],
)
def test_hierarchical_intervals_cover_at_least_93_percent(n, seed_sd, prompt_sd, noise_sd) -> None:
    rng = np.random.default_rng([n, int(100 * seed_sd), int(100 * prompt_sd)])
    counts = prompt_resamples(PROMPTS, REPLICATES, seed=0)
    hits = 0
    for _ in range(SIMULATIONS):
        per_prompt = simulate_cells(rng, n, seed_sd, prompt_sd, noise_sd)
        est = hierarchical_interval(*values_and_replicates(per_prompt, counts))
        hits += est.low <= TRUE_MEAN <= est.high
    assert est.over == OVER_SEEDS_AND_PROMPTS
    assert hits / SIMULATIONS >= 0.93


def test_the_seeds_alone_undercover_when_the_shared_prompts_dominate() -> None:
    """Why the prompt term is there: with one prompt set for every seed, seed-to-seed spread
    cannot see the prompt set's own luck."""
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(SIMULATIONS):
        per_prompt = simulate_cells(rng, 5, 0.05, 1.0, 1.0)
        est = seed_interval(per_prompt.mean(axis=1))
        hits += est.low <= TRUE_MEAN <= est.high
    assert hits / SIMULATIONS < 0.9


def test_paired_differences_cancel_what_the_two_objectives_share() -> None:
    """Two objectives under one seed share its data order and its prompts: their difference
    has neither the seed nor the prompt effect, so the paired interval is narrow and covers
    the true shift."""
    rng = np.random.default_rng(11)
    counts = prompt_resamples(PROMPTS, REPLICATES, seed=0)
    shift, hits, widths = 0.1, 0, []
    for _ in range(300):
        shared = simulate_cells(rng, 3, 1.0, 1.0, 0.0)
        base = shared + rng.normal(0.0, 0.2, shared.shape)
        other = shared + shift + rng.normal(0.0, 0.2, shared.shape)
        b_values, b_reps = values_and_replicates(base, counts)
        o_values, o_reps = values_and_replicates(other, counts)
        cmp = paired_difference(o_values, b_values, True, o_reps, b_reps)
        hits += cmp.diff.low <= shift <= cmp.diff.high
        widths.append(cmp.diff.high - cmp.diff.low)
    assert hits / 300 >= 0.93
    assert np.median(widths) < 0.1  # the shared effects (sd 1) would make it tens of times wider


def test_the_paired_test_on_seeds_is_the_one_sample_t_test() -> None:
    objective = {0: 2.0, 1: 2.4, 2: 1.7, 3: 2.2}
    baseline = {0: 1.0, 1: 1.1, 2: 1.2, 3: 0.9}
    cmp = paired_difference(objective, baseline, higher_is_better=True)
    diffs = [objective[s] - baseline[s] for s in objective]
    assert cmp.diff.p_value == pytest.approx(scipy_stats.ttest_1samp(diffs, 0.0).pvalue)
    assert cmp.n_better == 4 and cmp.n == 4
    worse = paired_difference(objective, baseline, higher_is_better=False)
    assert worse.n_better == 0
