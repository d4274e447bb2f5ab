"""Diversity metrics over a set of generated samples.

A model can reach a good likelihood and still say the same few things over and over; these
metrics measure that across samples: how many distinct n-grams there are (distinct-n), how
evenly the n-grams are spread (Ent-n), how the vocabulary falls off with rank (Zipf
coefficient), and how alike the samples are to each other (Self-BLEU).

A sample is a sequence of hashable tokens (ints or strs); `samples` is a list of samples.
Everything here is plain Python so that it runs anywhere the benchmark does.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Literal, overload

import numpy as np

Sample = Sequence[Hashable]
NGram = tuple[Hashable, ...]

# Chen & Cherry (2014) smoothing method 1, with NLTK's default epsilon: a zero count of
# matches at some order becomes 0.1 so that one missing order does not zero the whole score.
_SMOOTHING_EPSILON = 0.1


def _check_order(n: int) -> None:
    if n < 1:
        raise ValueError(f"n-gram order n must be >= 1, got {n}")


def _ngrams(sample: Sample, n: int) -> list[NGram]:
    """The contiguous n-grams of `sample`, as tuples (none when it is shorter than n)."""
    return list(zip(*(sample[k:] for k in range(n)), strict=False))


def _pooled_ngram_counts(samples: Sequence[Sample], n: int) -> Counter[NGram]:
    counts: Counter[NGram] = Counter()
    for sample in samples:
        counts.update(_ngrams(sample, n))
    return counts


def distinct_n(samples: Sequence[Sample], n: int) -> float:
    """Distinct-n: unique n-grams divided by total n-grams, pooled over all samples.

    Li et al. (2016), "A Diversity-Promoting Objective Function for Neural Conversation
    Models", Experiments, evaluation of diversity (distinct-1, distinct-2). The paper scales
    the number of distinct n-grams by the number of generated tokens; this divides by the
    number of n-grams, the usual reading, so that the value is a fraction in [0, 1] for every n.

    Returns 0.0 when the samples hold no n-gram at all (every sample shorter than n).
    """
    _check_order(n)
    counts = _pooled_ngram_counts(samples, n)
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def ngram_entropy(samples: Sequence[Sample], n: int) -> float:
    """Ent-n: Shannon entropy, in nats, of the pooled n-gram frequency distribution.

    Zhang et al. (2018), "Generating Informative and Diverse Conversational Responses via
    Adversarial Information Maximization", §5: unlike distinct-n, which only counts types,
    entropy also rewards spreading the mass evenly over them.

    Returns 0.0 when the samples hold no n-gram at all, as for a single repeated n-gram.
    """
    _check_order(n)
    counts = _pooled_ngram_counts(samples, n)
    total = sum(counts.values())
    return math.fsum(c / total * math.log(total / c) for c in counts.values())


def zipf_coefficient(samples: Sequence[Sample]) -> float:
    """The Zipf exponent s of the pooled unigram distribution, fitted as frequency ~ rank^-s.

    Holtzman et al. (2020), "The Curious Case of Neural Text Degeneration", Zipf distribution
    analysis: human text has s close to 1, and decoding that favours likely tokens makes the
    vocabulary fall off faster (larger s). The value is the magnitude of the least-squares slope
    of log frequency against log rank, over every distinct token.
    """
    counts = Counter(token for sample in samples for token in sample)
    if len(counts) < 2:
        raise ValueError(
            f"the Zipf coefficient needs at least 2 distinct tokens, got {len(counts)}"
        )
    frequencies = np.array(sorted(counts.values(), reverse=True), dtype=np.float64)
    ranks = np.arange(1, len(frequencies) + 1, dtype=np.float64)
    slope, _intercept = np.polyfit(np.log(ranks), np.log(frequencies), deg=1)
    return float(abs(slope))


def _top_two_counts(counts: Sequence[Counter[NGram]]) -> dict[NGram, tuple[int, int, int]]:
    """For each n-gram: (largest count in any sample, its sole holder or -1 if tied, second).

    The second-largest count is taken over samples as a multiset, so it equals the largest
    when two samples tie for it. Samples without the n-gram count 0.
    """
    top: dict[NGram, tuple[int, int, int]] = {}
    for index, sample_counts in enumerate(counts):
        for gram, count in sample_counts.items():
            best, holder, second = top.get(gram, (0, -1, 0))
            if count > best:
                top[gram] = (count, index, best)
            elif count == best:
                top[gram] = (best, -1, best)
            elif count > second:
                top[gram] = (best, holder, count)
    return top


def _leave_one_out_matches(counts: Sequence[Counter[NGram]]) -> list[int]:
    """Clipped n-gram matches of each sample against all the others as references.

    BLEU clips the count of each hypothesis n-gram at its largest count in any one reference
    (Papineni et al., 2002, §2.1). Without sample i, that largest count is the overall one,
    unless sample i alone holds it, in which case it is the second largest.
    """
    top = _top_two_counts(counts)
    matches = []
    for index, sample_counts in enumerate(counts):
        matched = 0
        for gram, count in sample_counts.items():
            best, holder, second = top[gram]
            matched += min(count, second if holder == index else best)
        matches.append(matched)
    return matches


def _leave_one_out_closest_lengths(lengths: Sequence[int]) -> list[int]:
    """For each sample, the length of the other sample closest to its own.

    Ties go to the shorter length, as in NLTK's `closest_ref_length`, which minimises
    (|ref_len - hyp_len|, ref_len). A sample's own length is a candidate only if another sample
    has it too; otherwise the nearest distinct lengths below and above it are.
    """
    multiplicity = Counter(lengths)
    distinct = sorted(multiplicity)
    closest = []
    for length in lengths:
        if multiplicity[length] > 1:
            closest.append(length)
            continue
        position = bisect_left(distinct, length)
        neighbours = distinct[max(0, position - 1) : position + 2]
        neighbours.remove(length)
        closest.append(min(neighbours, key=lambda ref: (abs(ref - length), ref)))
    return closest


def _brevity_penalty(closest_ref_len: int, hyp_len: int) -> float:
    """Papineni et al. (2002), §2.2.2, with NLTK's conventions for the edge cases."""
    if hyp_len > closest_ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - closest_ref_len / hyp_len)


def _smoothed_bleu(
    matches: Sequence[int], totals: Sequence[int], hyp_len: int, closest_ref_len: int
) -> float:
    """Sentence BLEU from per-order clipped matches and n-gram totals, as NLTK computes it.

    Mirrors `nltk.translate.bleu_score.sentence_bleu` with uniform weights and
    `SmoothingFunction().method1` operation for operation, so the floats agree: the score is 0
    when no unigram matches (NLTK returns early, before smoothing, without a warning); a zero
    count of matches at a higher order becomes epsilon / total (Chen & Cherry, 2014, smoothing
    method 1); the weighted log precisions are summed with `math.fsum`.
    """
    if matches[0] == 0:
        return 0.0
    weight = 1 / len(matches)
    log_precisions = (
        weight * math.log(m / t if m else _SMOOTHING_EPSILON / t)
        for m, t in zip(matches, totals, strict=True)
    )
    return _brevity_penalty(closest_ref_len, hyp_len) * math.exp(math.fsum(log_precisions))


@overload
def self_bleu(
    samples: Sequence[Sample], n: int = ..., *, per_sample: Literal[False] = ...
) -> float: ...


@overload
def self_bleu(
    samples: Sequence[Sample], n: int = ..., *, per_sample: Literal[True]
) -> tuple[float, list[float]]: ...


def self_bleu(
    samples: Sequence[Sample], n: int = 4, *, per_sample: bool = False
) -> float | tuple[float, list[float]]:
    """Leave-one-out Self-BLEU: the mean BLEU-n of each sample against all the other samples.

    Zhu et al. (2018), "Texygen: A Benchmarking Platform for Text Generation Models", §3:
    the more the samples resemble each other, the higher the score, so lower is more diverse.
    Texygen's implementation also counts the hypothesis among its own references; here it never
    does. Each per-sample value equals, to float rounding,
    `nltk.translate.bleu_score.sentence_bleu(others, sample, weights=(1/n,) * n,
    smoothing_function=SmoothingFunction().method1)`.

    Instead of N calls that each scan N - 1 references (quadratic in N), each n-gram's largest
    and second-largest counts over all samples, and the sorted sample lengths, give every
    sample's leave-one-out clipping counts and closest reference length, in time linear in the
    total number of tokens. Every sample is used; nothing is subsampled.

    Returns the mean score, or with `per_sample=True`, `(mean, scores)` with one score per
    sample in input order.
    """
    _check_order(n)
    if len(samples) < 2:
        raise ValueError(
            f"Self-BLEU needs at least 2 samples (each is scored against the others), "
            f"got {len(samples)}"
        )
    orders = range(1, n + 1)
    counts_by_order = [[Counter(_ngrams(sample, k)) for sample in samples] for k in orders]
    matches_by_order = [_leave_one_out_matches(counts) for counts in counts_by_order]
    totals_by_order = [
        [max(1, sum(sample_counts.values())) for sample_counts in counts]
        for counts in counts_by_order
    ]
    lengths = [len(sample) for sample in samples]
    closest = _leave_one_out_closest_lengths(lengths)
    scores = [
        _smoothed_bleu(
            [matches[i] for matches in matches_by_order],
            [totals[i] for totals in totals_by_order],
            lengths[i],
            closest[i],
        )
        for i in range(len(samples))
    ]
    mean = math.fsum(scores) / len(scores)
    return (mean, scores) if per_sample else mean
