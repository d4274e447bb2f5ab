"""Tests for MAUVE and the Fréchet embedding distance on small synthetic Gaussian features."""

from __future__ import annotations

import itertools

import mauve as mauve_package
import numpy as np
import pytest

from beyondmle.metrics.distributional import MauveResult, default_num_clusters, fed, mauve

N, DIM, CLUSTERS = 300, 16, 10


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, DIM)), rng.normal(size=(N, DIM))


def small_mauve(p: np.ndarray, q: np.ndarray, **kwargs: object) -> MauveResult:
    with pytest.warns(UserWarning, match="fewer than 1,000 samples"):
        return mauve(p, q, num_clusters=CLUSTERS, **kwargs)


def test_mauve_of_a_sample_against_itself_is_close_to_one(features):
    p, _ = features
    result = small_mauve(p, p.copy())
    assert result.mean > 0.95
    assert result.num_samples == N
    assert result.num_clusters == CLUSTERS
    assert any("fewer than 1,000 samples per side" in note for note in result.warnings)
    assert any("biased upward" in note for note in result.warnings)


def test_mauve_of_two_draws_from_one_distribution_is_close_to_one() -> None:
    """Two independent samples of the same features, not one sample and its copy."""
    rng = np.random.default_rng(5)
    p = rng.normal(size=(N, DIM))
    q = rng.normal(size=(N, DIM))
    assert small_mauve(p, q).mean > 0.9


def test_mauve_of_disjoint_distributions_is_close_to_zero() -> None:
    rng = np.random.default_rng(6)
    p = rng.normal(size=(N, DIM))
    q = rng.normal(loc=8.0, size=(N, DIM))  # no overlap: every cluster holds one side only
    assert small_mauve(p, q).mean < 0.05


def test_mauve_against_a_far_shifted_copy_is_close_to_zero(features):
    p, _ = features
    assert small_mauve(p, p + 5.0).mean < 0.1


def test_mauve_reports_one_value_per_seed_and_their_population_spread(features):
    p, q = features
    seeds = (3, 4, 5, 6)
    result = small_mauve(p, q, seeds=seeds)
    assert len(result.values) == len(seeds)
    expected = [
        mauve_package.compute_mauve(
            p_features=p, q_features=q, num_buckets=CLUSTERS, seed=seed, verbose=False
        ).mauve
        for seed in seeds
    ]
    np.testing.assert_allclose(result.values, expected)
    assert result.mean == pytest.approx(np.mean(expected))
    assert result.std == pytest.approx(np.std(expected, ddof=0))


def test_mauve_default_clusters_follow_the_package_rule():
    assert default_num_clusters(5000) == 500
    assert default_num_clusters(300) == 30
    assert default_num_clusters(15) == 2


def test_mauve_has_no_small_sample_warning_at_or_above_min_samples(features, recwarn):
    p, q = features
    result = mauve(p, q, num_clusters=CLUSTERS, min_samples=N)
    assert result.warnings == ()
    assert not [w for w in recwarn if "fewer than" in str(w.message)]


def test_mauve_rejects_unequal_sample_counts(features):
    p, q = features
    with pytest.raises(ValueError, match="equal sample counts on both sides"):
        mauve(p, q[:-1], num_clusters=CLUSTERS)


@pytest.mark.parametrize("seeds", [(0,), (0, 1), (0, 0, 1)])
def test_mauve_needs_three_distinct_seeds(features, seeds):
    p, q = features
    with pytest.raises(ValueError, match="at least 3 k-means seeds"):
        mauve(p, q, seeds=seeds, num_clusters=CLUSTERS)


def test_mauve_rejects_non_matrix_or_mismatched_features(features):
    p, q = features
    with pytest.raises(ValueError, match="must be 2-D"):
        mauve(p[:, 0], q[:, 0])
    with pytest.raises(ValueError, match="same dimension"):
        mauve(p, q[:, :-1])


def test_fed_of_identical_sets_is_zero(features):
    p, _ = features
    assert abs(fed(p, p.copy())) < 1e-6


def test_fed_of_identity_covariance_gaussians_is_squared_mean_gap():
    rng = np.random.default_rng(1)
    shift = np.array([1.0, -2.0, 0.5, 0.0])
    p = rng.normal(size=(200_000, 4))
    q = rng.normal(size=(150_000, 4)) + shift
    assert fed(p, q) == pytest.approx(shift @ shift, rel=0.02)


def test_fed_matches_closed_form_for_diagonal_covariances():
    # The 2^3 sign patterns, scaled so that their mean is 0 and their unbiased (ddof=1)
    # covariance is exactly I; mu + design * sigma then has covariance diag(sigma^2) exactly.
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    design = signs * np.sqrt((len(signs) - 1) / len(signs))
    mu_p, sigma_p = np.array([0.0, 1.0, -1.0]), np.array([1.0, 2.0, 0.5])
    mu_q, sigma_q = np.array([1.0, 1.0, 2.0]), np.array([3.0, 0.5, 0.5])
    p, q = mu_p + design * sigma_p, mu_q + design * sigma_q
    np.testing.assert_allclose(np.cov(p, rowvar=False), np.diag(sigma_p**2), atol=1e-12)
    # sum (sigma_p - sigma_q)^2 = 4 + 2.25 + 0, ||mu_p - mu_q||^2 = 1 + 0 + 9
    assert fed(p, q) == pytest.approx(16.25, rel=1e-9)


def test_fed_accepts_unequal_counts_and_rejects_degenerate_inputs(features):
    p, q = features
    assert fed(p, q[:100]) > 0.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        fed(p, q[:1])
    with pytest.raises(ValueError, match="same dimension"):
        fed(p, q[:, :-1])
    with pytest.raises(ValueError, match="must be 2-D"):
        fed(p[:, 0], q[:, 0])


def test_fed_handles_a_singular_covariance_product():
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    distance = fed(p, q)
    assert np.isfinite(distance)
    assert distance > 0.0
