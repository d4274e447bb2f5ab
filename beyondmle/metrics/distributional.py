"""Distributional-quality metrics: compare a sample of model text with a sample of human text.

Both metrics work on sentence features (see :mod:`beyondmle.metrics.featurizers`), never on raw
text, so the choice of featurizer is explicit and the features can be cached and reused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg

MIN_MAUVE_SEEDS = 3
FID_IMAGINARY_ATOL = 1e-3
FID_SINGULAR_EPS = 1e-6


@dataclass(frozen=True)
class MauveResult:
    """MAUVE summarised over k-means seeds.

    ``std`` is the population standard deviation (``ddof=0``) of ``values``: it describes the
    spread of the seeds actually run, not an estimate for unseen seeds. ``warnings`` holds
    caveats about the run (e.g. a sample too small for a trustworthy score).
    """

    mean: float
    std: float
    values: tuple[float, ...]
    num_samples: int
    num_clusters: int
    warnings: tuple[str, ...]


def _as_feature_matrix(features: np.ndarray, side: str) -> np.ndarray:
    """Return ``features`` as a finite 2-D float64 array, or raise ValueError naming the side."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{side}_features must be 2-D (samples x dims), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{side}_features contains NaN or infinite values")
    return array


def _check_same_dims(p: np.ndarray, q: np.ndarray) -> None:
    if p.shape[1] != q.shape[1]:
        raise ValueError(
            f"p_features and q_features must have the same dimension, got {p.shape[1]} and "
            f"{q.shape[1]}"
        )


def default_num_clusters(num_samples: int) -> int:
    """The mauve package's ``num_buckets='auto'`` rule: a tenth of the samples, at least 2.

    Pillutla et al. 2021 (NeurIPS), §4, quantise with k = n / 10 clusters; the package
    (``compute_mauve``, v0.4.0) computes it as ``max(2, int(round(n / 10)))``, which this mirrors
    so that an explicit and an automatic setting give the same score.
    """
    return max(2, int(round(num_samples / 10)))


def _small_sample_warning(num_samples: int, min_samples: int) -> str:
    return (
        f"MAUVE computed on {num_samples} samples per side; with fewer than {min_samples:,} "
        "samples per side MAUVE is biased upward (optimistic) and noisy across seeds "
        "(mauve package README, 'Best Practices for MAUVE'; Pillutla et al. 2021 use 5,000)."
    )


def mauve(
    p_features: np.ndarray,
    q_features: np.ndarray,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    num_clusters: int | None = None,
    scaling: float = 5.0,
    pca_max_data: int = -1,
    kmeans_explained_var: float = 0.9,
    kmeans_num_redo: int = 5,
    kmeans_max_iter: int = 500,
    divergence_curve_discretization_size: int = 25,
    min_samples: int = 1000,
) -> MauveResult:
    """MAUVE between human features ``p_features`` and model features ``q_features``.

    MAUVE (Pillutla et al. 2021, "MAUVE: Measuring the Gap Between Neural Text and Human Text
    using Divergence Frontiers", NeurIPS, §4 and appendix) quantises the joint feature cloud with
    k-means and takes the area under the divergence frontier of the two histograms; 1 means the
    distributions are indistinguishable at that quantisation, values near 0 mean they barely
    overlap. The score depends on the k-means initialisation, so it is computed once per seed
    and reported as mean and spread over at least three seeds. The computation is delegated to
    the reference implementation (``mauve.compute_mauve``), always on precomputed features so it
    never loads a model.

    Raises ValueError for unequal sample counts (the histograms would otherwise mix a sample-size
    effect into the score), for non-2-D or mismatched feature matrices, or for fewer than three
    distinct seeds. Warns (and records the warning in the result) below ``min_samples`` samples.
    """
    p = _as_feature_matrix(p_features, "p")
    q = _as_feature_matrix(q_features, "q")
    _check_same_dims(p, q)
    if p.shape[0] != q.shape[0]:
        raise ValueError(
            "MAUVE needs equal sample counts on both sides, got "
            f"{p.shape[0]} (p) and {q.shape[0]} (q)"
        )
    seeds = tuple(seeds)
    if len(set(seeds)) < MIN_MAUVE_SEEDS:
        raise ValueError(
            f"MAUVE is reported as mean and spread over at least {MIN_MAUVE_SEEDS} k-means seeds, "
            f"got {len(set(seeds))} distinct seed(s)"
        )
    num_samples = p.shape[0]
    clusters = default_num_clusters(num_samples) if num_clusters is None else num_clusters
    if clusters < 2:
        raise ValueError(f"num_clusters must be at least 2, got {clusters}")

    notes: list[str] = []
    if num_samples < min_samples:
        note = _small_sample_warning(num_samples, min_samples)
        notes.append(note)
        warnings.warn(note, UserWarning, stacklevel=2)

    # Imported here: the mauve package pulls in torch and transformers (seconds of start-up).
    from mauve import compute_mauve

    values = tuple(
        float(
            compute_mauve(
                p_features=p,
                q_features=q,
                num_buckets=clusters,
                pca_max_data=pca_max_data,
                kmeans_explained_var=kmeans_explained_var,
                kmeans_num_redo=kmeans_num_redo,
                kmeans_max_iter=kmeans_max_iter,
                device_id=-1,
                divergence_curve_discretization_size=divergence_curve_discretization_size,
                mauve_scaling_factor=scaling,
                verbose=False,
                seed=seed,
            ).mauve
        )
        for seed in seeds
    )
    return MauveResult(
        mean=float(np.mean(values)),
        std=float(np.std(values, ddof=0)),
        values=values,
        num_samples=num_samples,
        num_clusters=clusters,
        warnings=tuple(notes),
    )


def _gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, ddof=1) covariance, the fit used by the reference FID code."""
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _sqrtm_of_product(sigma_p: np.ndarray, sigma_q: np.ndarray) -> np.ndarray:
    """Real square root of ``sigma_p @ sigma_q``, as computed in pytorch-fid.

    When the product is singular (e.g. fewer samples than dimensions) the square root is
    unreliable, so ``FID_SINGULAR_EPS * I`` is added to both covariances and it is retried.
    A small imaginary part is numerical noise and is dropped; a large one means the result is
    meaningless and raises, as in the reference FID implementation (Heusel et al. 2017).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        root = linalg.sqrtm(sigma_p @ sigma_q)
    singular = any(issubclass(w.category, linalg.LinAlgWarning) for w in caught)
    if singular or not np.isfinite(root).all():
        offset = np.eye(sigma_p.shape[0]) * FID_SINGULAR_EPS
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            root = linalg.sqrtm((sigma_p + offset) @ (sigma_q + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0.0, atol=FID_IMAGINARY_ATOL):
            raise ValueError(
                "Fréchet distance: matrix square root has a large imaginary component "
                f"({np.max(np.abs(root.imag)):.3g}); the covariance estimates are degenerate"
            )
        root = root.real
    return root


def fed(p_features: np.ndarray, q_features: np.ndarray) -> float:
    """Fréchet embedding distance between human features ``p`` and model features ``q``.

    The Fréchet (2-Wasserstein) distance between Gaussians fitted to the two feature sets,
    ``||mu_p - mu_q||^2 + Tr(S_p + S_q - 2 (S_p S_q)^{1/2})``, introduced as FID by Heusel et al.
    2017 ("GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium",
    §3) and applied to sentence embeddings by Semeniuta et al. 2018 ("On Accurate Evaluation of
    GANs for Language Generation", §3.2). 0 means identical first and second moments; it is not
    bounded above. Unlike MAUVE it does not need equal sample counts, but each side needs at
    least two rows to have a covariance. Computed in float64; a tiny negative result from
    round-off is clamped to 0.
    """
    p = _as_feature_matrix(p_features, "p")
    q = _as_feature_matrix(q_features, "q")
    _check_same_dims(p, q)
    for side, array in (("p", p), ("q", q)):
        if array.shape[0] < 2:
            raise ValueError(
                f"{side}_features needs at least 2 rows to estimate a covariance, "
                f"got {array.shape[0]}"
            )
    mu_p, sigma_p = _gaussian_fit(p)
    mu_q, sigma_q = _gaussian_fit(q)
    diff = mu_p - mu_q
    root = _sqrtm_of_product(sigma_p, sigma_q)
    distance = diff @ diff + np.trace(sigma_p) + np.trace(sigma_q) - 2.0 * np.trace(root)
    return max(float(distance), 0.0)
