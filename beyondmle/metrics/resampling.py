"""Prompt-resampling replicates: what a metric would have been on another draw of the
evaluation prompts, so that the report's intervals cover the prompts as well as the seeds.

Every cell under the same evaluation settings resamples the same way: replicate r draws the
prompt indices `prompt_resamples(N, R, seed)[r]` (with replacement), so replicate r of two
objectives sees the same prompts and their difference is paired. A replicate is given as counts
`C[r, i]`, how often prompt i was drawn.

The replicate of a metric is the metric recomputed on the resampled samples: a mean for the
per-sample metrics (seq-rep-n, a sample's Self-BLEU), a ratio of sums for the per-position
ones (rep, wrep, the continuation NLL), and for the pooled ones (distinct-n, Ent-n, Zipf) the
pooled n-gram counts of the resample, which are `C @ M` for the sample-by-n-gram count matrix M:
one sparse product for all replicates instead of a loop.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
from scipy import sparse

Sample = Sequence[Hashable]
CHUNK = 50  # replicates per dense (R, K) block


def prompt_resamples(n_prompts: int, replicates: int, seed: int) -> np.ndarray:
    """Counts (R, N): how often each of N prompts is drawn in each of R resamples of size N."""
    rng = np.random.default_rng([seed, n_prompts, 0x5EED])
    draws = rng.integers(0, n_prompts, size=(replicates, n_prompts))
    counts = np.zeros((replicates, n_prompts), dtype=np.float64)
    np.add.at(counts, (np.arange(replicates)[:, None], draws), 1.0)
    return counts


def mean_replicates(values: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """Replicates (R,) of the mean of per-sample `values` (N,)."""
    v = np.asarray(values, dtype=np.float64)
    return counts @ v / counts.sum(axis=1)


def mean_summary(
    values: Sequence[float], counts: np.ndarray | None
) -> tuple[float, tuple[float, ...] | None, float]:
    """The mean of per-sample `values`, its replicates (None without resamples) and the
    standard error of the mean over the samples (NaN for one sample)."""
    v = np.asarray(values, dtype=np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    reps = None if counts is None else tuple(float(x) for x in mean_replicates(v, counts))
    return float(v.mean()), reps, se


def ratio_replicates(
    numerators: Sequence[float], denominators: Sequence[float], counts: np.ndarray
) -> np.ndarray:
    """Replicates (R,) of sum(numerator) / sum(denominator) over the resampled samples."""
    num = counts @ np.asarray(numerators, dtype=np.float64)
    den = counts @ np.asarray(denominators, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def ngram_matrix(samples: Sequence[Sample], n: int) -> sparse.csr_matrix:
    """Counts (N, K) of each of the K distinct n-grams in each sample."""
    ids: dict[tuple, int] = {}
    rows, cols = [], []
    for i, sample in enumerate(samples):
        for gram in zip(*(sample[k:] for k in range(n)), strict=False):
            rows.append(i)
            cols.append(ids.setdefault(gram, len(ids)))
    data = np.ones(len(rows), dtype=np.float64)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(samples), max(1, len(ids))))


def _pooled(counts: np.ndarray, matrix: sparse.csr_matrix):
    """Pooled n-gram counts (chunk, K) of the resamples, chunk by chunk."""
    transposed = matrix.T.tocsr()
    for start in range(0, counts.shape[0], CHUNK):
        yield (transposed @ counts[start : start + CHUNK].T).T


def distinct_replicates(samples: Sequence[Sample], n: int, counts: np.ndarray) -> np.ndarray:
    """Replicates of distinct-n (`beyondmle.metrics.distinct_n`): distinct / total n-grams."""
    out = []
    for pooled in _pooled(counts, ngram_matrix(samples, n)):
        total = pooled.sum(axis=1)
        out.append(
            np.divide((pooled > 0).sum(axis=1), total, out=np.zeros_like(total), where=total > 0)
        )
    return np.concatenate(out)


def entropy_replicates(samples: Sequence[Sample], n: int, counts: np.ndarray) -> np.ndarray:
    """Replicates of Ent-n (`beyondmle.metrics.ngram_entropy`), in nats."""
    out = []
    for pooled in _pooled(counts, ngram_matrix(samples, n)):
        total = pooled.sum(axis=1, keepdims=True)
        p = np.divide(pooled, total, out=np.zeros_like(pooled), where=total > 0)
        logs = np.log(p, out=np.zeros_like(p), where=p > 0)
        out.append(-(p * logs).sum(axis=1))
    return np.concatenate(out)


def zipf_replicates(samples: Sequence[Sample], counts: np.ndarray) -> np.ndarray:
    """Replicates of the Zipf coefficient (`beyondmle.metrics.zipf_coefficient`); NaN where a
    resample holds fewer than two distinct tokens."""
    out = []
    for pooled in _pooled(counts, ngram_matrix(samples, 1)):
        for row in pooled:
            freq = np.sort(row[row > 0])[::-1]
            if len(freq) < 2:
                out.append(np.nan)
                continue
            ranks = np.arange(1, len(freq) + 1, dtype=np.float64)
            out.append(abs(np.polyfit(np.log(ranks), np.log(freq), deg=1)[0]))
    return np.asarray(out)


def union_replicates(samples: Sequence[Sample], counts: np.ndarray) -> np.ndarray:
    """Replicates of the number of distinct tokens over the resampled samples (uniq)."""
    out = []
    for pooled in _pooled(counts, ngram_matrix(samples, 1)):
        out.append((pooled > 0).sum(axis=1).astype(np.float64))
    return np.concatenate(out)
