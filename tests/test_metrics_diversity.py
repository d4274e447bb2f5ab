"""Diversity metrics: hand-checked values, and Self-BLEU against NLTK's sentence-level BLEU."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from beyondmle.metrics.diversity import distinct_n, ngram_entropy, self_bleu, zipf_coefficient


def nltk_leave_one_out(samples: list[list[int]], n: int) -> list[float]:
    """The definition Self-BLEU must match: NLTK's BLEU of each sample against all the others."""
    smoothing = SmoothingFunction().method1
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*BLEU score evaluates to 0", category=UserWarning
        )
        return [
            sentence_bleu(
                [other for j, other in enumerate(samples) if j != i],
                sample,
                weights=(1 / n,) * n,
                smoothing_function=smoothing,
            )
            for i, sample in enumerate(samples)
        ]


def test_distinct_n_hand_checked() -> None:
    samples = [["a", "b", "a", "b"], ["a", "c"]]
    # unigrams: a b a b a c -> 6 in all, 3 distinct (a, b, c): 3 / 6
    assert distinct_n(samples, 1) == pytest.approx(0.5)
    # bigrams: (a,b) (b,a) (a,b) | (a,c) -> 4 in all, 3 distinct: 3 / 4
    assert distinct_n(samples, 2) == pytest.approx(0.75)
    # trigrams: (a,b,a) (b,a,b) from the first sample only, both distinct: 2 / 2
    assert distinct_n(samples, 3) == pytest.approx(1.0)


def test_distinct_n_without_ngrams_is_zero() -> None:
    assert distinct_n([[1, 2], [3]], 3) == 0.0
    assert distinct_n([], 1) == 0.0


def test_distinct_n_rejects_order_below_one() -> None:
    with pytest.raises(ValueError, match="n-gram order"):
        distinct_n([[1, 2]], 0)


def test_ngram_entropy_hand_checked() -> None:
    # four distinct unigrams, once each: uniform over 4 -> ln 4
    assert ngram_entropy([[1, 2], [3, 4]], 1) == pytest.approx(math.log(4))
    # bigrams of 1 2 1 2 1: (1,2) (2,1) (1,2) (2,1) -> uniform over 2 -> ln 2
    assert ngram_entropy([[1, 2, 1, 2, 1]], 2) == pytest.approx(math.log(2))
    # unigrams a a a b: p = 3/4, 1/4 -> -(3/4 ln 3/4 + 1/4 ln 1/4)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert ngram_entropy([["a", "a", "a", "b"]], 1) == pytest.approx(expected)


def test_ngram_entropy_of_one_ngram_type_or_none_is_zero() -> None:
    assert ngram_entropy([[7, 7, 7]], 1) == 0.0
    assert ngram_entropy([[7]], 2) == 0.0


def power_law_samples(exponent: int) -> list[list[int]]:
    """Token r occurs K / r**exponent times, exactly: K is divisible by every r**exponent."""
    ranks = range(1, 7)
    scale = math.lcm(*(r**exponent for r in ranks))
    return [[r] * (scale // r**exponent) for r in ranks]


@pytest.mark.parametrize("exponent", [1, 2])
def test_zipf_coefficient_of_exact_power_law(exponent: int) -> None:
    assert zipf_coefficient(power_law_samples(exponent)) == pytest.approx(exponent, abs=1e-9)


def test_zipf_coefficient_pools_samples_and_ignores_their_order() -> None:
    pooled = [token for sample in power_law_samples(1) for token in sample]
    assert zipf_coefficient([pooled[::-1]]) == pytest.approx(1.0, abs=1e-9)


def test_zipf_coefficient_needs_two_distinct_tokens() -> None:
    with pytest.raises(ValueError, match="at least 2 distinct tokens"):
        zipf_coefficient([[5, 5], [5]])


samples_with_collisions = st.lists(
    st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=9),
    min_size=2,
    max_size=7,
)


@settings(max_examples=60, deadline=None)
@given(samples=samples_with_collisions, n=st.integers(min_value=1, max_value=5))
def test_self_bleu_matches_nltk_for_every_sample(samples: list[list[int]], n: int) -> None:
    mean, scores = self_bleu(samples, n, per_sample=True)
    expected = nltk_leave_one_out(samples, n)
    assert scores == pytest.approx(expected, rel=0, abs=1e-9)
    assert mean == pytest.approx(math.fsum(expected) / len(expected), rel=0, abs=1e-9)


def test_self_bleu_matches_nltk_on_edge_lengths() -> None:
    # an empty sample, a length-1 sample, a sample shorter than n, and a length whose only
    # holder is the hypothesis itself (so the closest other length must be looked up)
    samples = [[], [1], [1, 2], [1, 2, 3], [1, 2, 3, 1, 2], [2, 3, 1, 2, 3, 1, 2, 3, 4]]
    _mean, scores = self_bleu(samples, per_sample=True)
    assert scores == pytest.approx(nltk_leave_one_out(samples, 4), rel=0, abs=1e-9)
    assert scores[0] == 0.0


def test_self_bleu_matches_nltk_on_string_tokens() -> None:
    sentences = [
        "the cat sat on the mat",
        "the cat sat on a mat",
        "a dog lay on the rug",
        "the the",
    ]
    samples = [sentence.split() for sentence in sentences]
    _mean, scores = self_bleu(samples, per_sample=True)
    assert scores == pytest.approx(nltk_leave_one_out(samples, 4), rel=0, abs=1e-9)


def test_self_bleu_leaves_the_hypothesis_out() -> None:
    # one sample unlike the others: with itself among its references it would score 1.0
    samples = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 6], [6, 7, 8, 9, 6]]
    _mean, scores = self_bleu(samples, per_sample=True)
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(1.0)


def test_self_bleu_of_identical_samples_is_one() -> None:
    samples = [[3, 1, 4, 1, 5, 9]] * 5
    assert self_bleu(samples) == pytest.approx(1.0)


def test_self_bleu_per_sample_returns_one_value_per_sample() -> None:
    samples = [[1, 2, 3, 4], [1, 2, 3, 5], [2, 3, 4, 5], [5, 4, 3, 2, 1]]
    mean, scores = self_bleu(samples, per_sample=True)
    assert len(scores) == len(samples)
    assert mean == pytest.approx(sum(scores) / len(scores))
    assert self_bleu(samples) == mean


def test_self_bleu_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        self_bleu([[1, 2, 3, 4]])
    with pytest.raises(ValueError, match="at least 2 samples"):
        self_bleu([])


def test_self_bleu_rejects_order_below_one() -> None:
    with pytest.raises(ValueError, match="n-gram order"):
        self_bleu([[1], [2]], n=0)
