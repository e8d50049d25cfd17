"""Tests for cdgan.metrics: Frechet distance against closed forms and SciPy, streaming statistics, mode coverage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from cdgan.metrics import FeatureStats, frechet_distance, mode_coverage


def _scipy_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """The reference, as pytorch-fid computes it: a general (Schur) matrix square root of S1 S2."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """A well-conditioned SPD matrix: eigenvalues in [0.5, 2]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * rng.uniform(0.5, 2.0, d)) @ q.T


def test_frechet_distance_is_zero_for_identical_gaussians() -> None:
    # given
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(16), _spd(rng, 16)
    # when / then
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_in_2048d_unit_mean_shift_is_2048() -> None:
    # given means 0 vs 1 and identity covariances: the trace terms cancel, ||mu1 - mu2||^2 = d
    d = 2048
    eye = np.eye(d)
    # when
    distance = frechet_distance(np.zeros(d), eye, np.ones(d), eye)
    # then
    assert distance == pytest.approx(2048.0, rel=1e-9)


def test_frechet_distance_closed_form_for_commuting_covariances() -> None:
    # given diagonal covariances: tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    # when
    distance = frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b))
    # then
    assert distance == pytest.approx(float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()), rel=1e-12)


@pytest.mark.parametrize("d", [16, 64])
def test_frechet_distance_agrees_with_scipy_sqrtm(d: int) -> None:
    # given random well-conditioned SPD covariances and random means
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _spd(rng, d), _spd(rng, d)
    # when
    ours, reference = frechet_distance(mu1, s1, mu2, s2), _scipy_frechet(mu1, s1, mu2, s2)
    # then
    assert ours == pytest.approx(reference, rel=1e-6), f"d={d}: ours {ours} vs scipy {reference}"


def test_frechet_distance_is_symmetric_and_accepts_float32() -> None:
    # given
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    s1, s2 = _spd(rng, 8).astype(np.float32), _spd(rng, 8).astype(np.float32)
    # when
    forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    # then
    assert isinstance(forward, float)
    assert forward == pytest.approx(backward, rel=1e-9)


def test_frechet_distance_on_rank_deficient_covariance_is_finite_and_matches_scipy() -> None:
    # given fewer samples (10) than dimensions (32): both sample covariances are singular
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((10, 32)), rng.standard_normal((10, 32)) + 0.5
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert np.linalg.matrix_rank(s1) < 32, "test setup: covariance should be singular"
    # when
    ours, reference = frechet_distance(mu1, s1, mu2, s2), _scipy_frechet(mu1, s1, mu2, s2)
    # then
    assert np.isfinite(ours) and ours >= 0
    assert ours == pytest.approx(reference, rel=1e-6), f"ours {ours} vs scipy {reference}"


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_streaming_equals_numpy_mean_and_cov() -> None:
    # given features with a non-zero mean, fed in uneven batches
    rng = np.random.default_rng(3)
    features = rng.standard_normal((103, 5)) * [1.0, 2.0, 0.5, 3.0, 1.0] + [1.0, -2.0, 0.0, 5.0, 0.3]
    stats = FeatureStats(5)
    # when
    for chunk in np.array_split(features, [7, 40, 41, 90]):
        stats.update(torch.from_numpy(chunk).float())
    mean, cov = stats.compute()
    # then it matches numpy on the same float32 inputs, in float64
    reference = features.astype(np.float32).astype(np.float64)
    assert mean.dtype == np.float64 and cov.dtype == np.float64
    np.testing.assert_allclose(mean, reference.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov, np.cov(reference, rowvar=False), rtol=0, atol=1e-10)


def test_feature_stats_reset_forgets_previous_batches() -> None:
    # given
    stats = FeatureStats(2)
    stats.update(torch.full((4, 2), 100.0))
    # when
    stats.reset()
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    stats.update(x)
    mean, cov = stats.compute()
    # then
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(cov, np.cov(x.numpy().astype(np.float64), rowvar=False), atol=1e-12)


# --- mode coverage -------------------------------------------------------------------------------------------------

CENTRES = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])


def test_mode_coverage_all_points_on_centres() -> None:
    # given one sample exactly on each centre
    result = mode_coverage(CENTRES.copy(), CENTRES, std=0.05)
    # then all modes are covered and every sample is high quality
    assert result == {"modes": 4.0, "hq_frac": 1.0}


def test_mode_coverage_points_far_away() -> None:
    # given samples well outside 3 std of every centre
    x = np.array([[1.0, 1.0], [10.0, 10.0], [-5.0, 0.0]])
    # when
    result = mode_coverage(x, CENTRES, std=0.05)
    # then
    assert result == {"modes": 0.0, "hq_frac": 0.0}


def test_mode_coverage_counts_each_mode_once_and_uses_3_std() -> None:
    # given three samples on mode 0 (one at 2.9 std), one on mode 3 at 3.1 std (too far), one far off
    std = 0.1
    x = np.array([[0.0, 0.0], [0.01, 0.0], [0.29, 0.0], [2.31, 2.0], [1.0, 1.0]])
    # when
    result = mode_coverage(x, CENTRES, std=std)
    # then only mode 0 is covered; 3 of 5 samples are within 3 std
    assert result["modes"] == 1.0
    assert result["hq_frac"] == pytest.approx(3 / 5)
