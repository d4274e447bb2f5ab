"""Prompt-resampling replicates: replicate r of a metric is the metric itself, computed by the
plain function on the samples that resample r drew, and every cell draws the same resamples."""

from __future__ import annotations

import random

import numpy as np
import pytest

from beyondmle.metrics import distinct_n, ngram_entropy, seq_rep_n, zipf_coefficient
from beyondmle.metrics.repetition import seq_rep_values
from beyondmle.metrics.resampling import (
    distinct_replicates,
    entropy_replicates,
    mean_replicates,
    prompt_resamples,
    ratio_replicates,
    union_replicates,
    zipf_replicates,
)


@pytest.fixture(scope="module")
def samples() -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randint(0, 30) for _ in range(rng.randint(3, 12))] for _ in range(40)]


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    return prompt_resamples(40, 6, seed=3)


def drawn(samples, row) -> list:
    """The resample as an explicit list: sample i repeated as often as it was drawn."""
    return [s for i, c in enumerate(row) for s in [samples[i]] * int(c)]


def test_every_resample_draws_n_prompts_and_every_cell_draws_the_same(counts) -> None:
    assert counts.shape == (6, 40)
    assert (counts.sum(axis=1) == 40).all()
    assert np.array_equal(counts, prompt_resamples(40, 6, seed=3))
    assert not np.array_equal(counts, prompt_resamples(40, 6, seed=4))


@pytest.mark.parametrize("n", [1, 2, 4])
def test_distinct_and_entropy_replicates_equal_the_metric_on_the_resample(samples, counts, n):
    expected_distinct = [distinct_n(drawn(samples, row), n) for row in counts]
    expected_entropy = [ngram_entropy(drawn(samples, row), n) for row in counts]
    assert distinct_replicates(samples, n, counts) == pytest.approx(expected_distinct)
    assert entropy_replicates(samples, n, counts) == pytest.approx(expected_entropy)


def test_zipf_and_uniq_replicates_equal_the_metric_on_the_resample(samples, counts) -> None:
    expected = [zipf_coefficient(drawn(samples, row)) for row in counts]
    assert zipf_replicates(samples, counts) == pytest.approx(expected)
    uniq = [len({t for s in drawn(samples, row) for t in s}) for row in counts]
    assert union_replicates(samples, counts).tolist() == uniq


def test_mean_and_ratio_replicates_equal_the_metric_on_the_resample(samples, counts) -> None:
    expected = [seq_rep_n(drawn(samples, row), 2) for row in counts]
    assert mean_replicates(seq_rep_values(samples, 2), counts) == pytest.approx(expected)
    numerators = [sum(s) for s in samples]
    denominators = [len(s) for s in samples]
    ratios = [
        sum(sum(s) for s in drawn(samples, row)) / sum(len(s) for s in drawn(samples, row))
        for row in counts
    ]
    assert ratio_replicates(numerators, denominators, counts) == pytest.approx(ratios)
