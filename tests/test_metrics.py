"""Tests for cdgan.metrics: Frechet distance against closed forms and SciPy, KID, k-NN precision/recall and
density/coverage, streaming statistics and Inception Score, mode coverage."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from prdc import compute_prdc
from sklearn.neighbors import NearestNeighbors
from torch import nn
from torchmetrics.image.inception import InceptionScore as TorchmetricsInceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from cdgan.metrics import (
    FID_EPS,
    FeatureStats,
    InceptionScore,
    density_coverage,
    frechet_distance,
    kernel_inception_distance,
    kid_scaled,
    knn_radii,
    mixture_mmd,
    mode_coverage,
    precision_recall,
)


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


def test_frechet_distance_in_2048d_matches_the_closed_form() -> None:
    # given means 0 vs 1 and diagonal covariances at the Inception feature size:
    # FID = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 = 2048 + sum (sqrt(a) - sqrt(b))^2
    d = 2048
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    # when
    distance = frechet_distance(np.zeros(d), np.diag(a), np.ones(d), np.diag(b))
    # then
    assert distance == pytest.approx(d + float(((np.sqrt(a) - np.sqrt(b)) ** 2).sum()), rel=1e-9)


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


def test_frechet_distance_on_near_singular_covariance_matches_scipy_without_warning() -> None:
    # given more samples (500) than dimensions (40) but features of rank 8 plus 1e-6 noise: condition ~1e12
    rng = np.random.default_rng(4)
    basis = rng.standard_normal((8, 40))
    a = rng.standard_normal((500, 8)) @ basis + 1e-6 * rng.standard_normal((500, 40))
    b = rng.standard_normal((500, 8)) @ basis * 1.5 + 1e-6 * rng.standard_normal((500, 40)) + 0.2
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert np.linalg.cond(s1) > 1e10, "test setup: covariance should be near-singular"
    # when
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PSD within round-off: the exact path, no epsilon
        ours = frechet_distance(mu1, s1, mu2, s2)
    # then
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_distance_adds_eps_with_a_warning_when_a_covariance_is_indefinite() -> None:
    # given a covariance with eigenvalue -1e-7: beyond round-off, but +eps * I makes it PSD
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    s1, s2 = (q * [-1e-7, 0.5, 1.0, 1.5, 2.0, 2.5]) @ q.T, _spd(rng, 6)
    s1 = (s1 + s1.T) / 2
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    # when
    with pytest.warns(RuntimeWarning, match=r"adding 1e-06 \* I"):
        distance = frechet_distance(mu1, s1, mu2, s2)
    # then it is the distance between the offset covariances, which alone need no fallback
    eye = FID_EPS * np.eye(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = frechet_distance(mu1, s1 + eye, mu2, s2 + eye)
    assert distance == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_non_finite_statistics_raises_without_retrying() -> None:
    # given a NaN in a covariance (features of a diverged generator): no epsilon can mend it
    sigma = np.eye(3)
    sigma[0, 1] = sigma[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite mean or covariance"):
        frechet_distance(np.zeros(3), sigma, np.zeros(3), np.eye(3))


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


def test_feature_stats_of_generator_like_batches_equal_one_batch_in_2048d() -> None:
    # given 2048-d features far from zero (ReLU-like means), streamed in 4 batches vs all at once
    rng = np.random.default_rng(6)
    features = torch.from_numpy(rng.standard_normal((300, 2048)) * 0.1 + 5.0)
    streamed, whole = FeatureStats(2048), FeatureStats(2048)
    # when
    for chunk in features.split(77):
        streamed.update(chunk)
    whole.update(features)
    # then: same statistics, and the FID between them is zero
    (mu_s, cov_s), (mu_w, cov_w) = streamed.compute(), whole.compute()
    np.testing.assert_allclose(mu_s, mu_w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov_s, cov_w, rtol=0, atol=1e-10)
    np.testing.assert_allclose(cov_w, np.cov(features.numpy(), rowvar=False), rtol=0, atol=1e-10)


# --- Inception Score -----------------------------------------------------------------------------------------------


def test_inception_score_streamed_equals_torchmetrics_on_one_split() -> None:
    # given logits fed in uneven batches
    logits = torch.randn(300, 10) * 3
    ours = InceptionScore(10)
    for chunk in logits.split(37):
        ours.update(chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns that it buffers every feature
        reference = TorchmetricsInceptionScore(feature=torch.nn.Identity(), splits=1)
        reference.update(logits)
        expected = float(reference.compute()[0])
    # then
    assert ours.compute() == pytest.approx(expected, rel=1e-5)


def test_inception_score_bounds_one_and_number_of_classes() -> None:
    # given uninformative predictions (every p(y|x) uniform) and confident ones spread evenly over 10 classes
    flat, sharp = InceptionScore(10), InceptionScore(10)
    flat.update(torch.zeros(50, 10))
    sharp.update(100.0 * torch.eye(10).repeat(5, 1))
    # then IS = 1 and IS = 10
    assert flat.compute() == pytest.approx(1.0, abs=1e-12)
    assert sharp.compute() == pytest.approx(10.0, rel=1e-9)


# --- KID -----------------------------------------------------------------------------------------------------------


def _numpy_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out (Binkowski et al. 2018, eq. 2)."""
    m, d = len(x), x.shape[1]
    k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off - 2 * k_xy.sum() / m**2)


def test_kid_with_one_full_subset_equals_the_written_out_estimator() -> None:
    # given one subset holding every sample: the subset draw only reorders rows
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((60, 5)), rng.standard_normal((60, 5)) + 0.3
    # when
    kid, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), 1, 60, seed=0)
    # then
    assert kid == pytest.approx(_numpy_kid(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_is_near_zero_for_one_distribution_and_positive_when_shifted() -> None:
    # given two independent draws from N(0, I) and one from N(0.5, I)
    real, same, shifted = torch.randn(1000, 16), torch.randn(1000, 16), torch.randn(1000, 16) + 0.5
    # when
    kid_same, std_same = kernel_inception_distance(real, same, 20, 500, seed=0)
    kid_shifted, std_shifted = kernel_inception_distance(real, shifted, 20, 500, seed=0)
    # then the unbiased estimate straddles zero for one distribution and is far above it for two
    assert abs(kid_same) < 3 * std_same + 1e-3, (kid_same, std_same)
    assert kid_shifted > 10 * (abs(kid_same) + std_same) and kid_shifted > 5 * std_shifted, (kid_shifted, kid_same)


def test_kid_subsets_are_seeded() -> None:
    real, fake = torch.randn(200, 4), torch.randn(200, 4) + 0.2
    assert kernel_inception_distance(real, fake, 5, 50, seed=3) == kernel_inception_distance(real, fake, 5, 50, seed=3)
    assert kernel_inception_distance(real, fake, 5, 50, seed=3) != kernel_inception_distance(real, fake, 5, 50, seed=4)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save all extracted features")
def test_kid_agrees_with_torchmetrics_kid_on_the_same_subsets() -> None:
    # given features that torchmetrics' KID takes as they are (an identity "network") and its subsets drawn
    # from the global RNG seeded as cdgan seeds its own generator: both then draw the same subsets in turn
    real, fake = torch.randn(300, 12, dtype=torch.float64), torch.randn(250, 12, dtype=torch.float64) * 1.2 + 0.1
    reference = KernelInceptionDistance(feature=nn.Identity(), subsets=7, subset_size=100)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    # when
    torch.manual_seed(5)
    expected_mean, expected_std = reference.compute()
    kid, std = kernel_inception_distance(real, fake, subsets=7, subset_size=100, seed=5)
    # then
    assert kid == pytest.approx(float(expected_mean), rel=1e-12)
    assert std == pytest.approx(float(expected_std), rel=1e-9)


def test_kid_subset_larger_than_a_set_is_refused() -> None:
    with pytest.raises(ValueError, match="subset_size 11"):
        kernel_inception_distance(torch.randn(20, 3), torch.randn(10, 3), 2, 11, seed=0)


def test_kid_of_scaled_features_does_not_depend_on_their_units() -> None:
    # given ReLU-like features of two sets, and the same features in other units (x 40 + 3)
    real, fake = (
        torch.randn(400, 16, dtype=torch.float64).relu(),
        (torch.randn(400, 16, dtype=torch.float64) + 0.3).relu(),
    )

    def kid(real: torch.Tensor, fake: torch.Tensor, is_scaled: bool) -> float:
        if is_scaled:  # by the statistics of the real set, as evaluation scales the domain classifier's features
            stats = real.double().mean(0).numpy(), np.cov(real.double().numpy(), rowvar=False)
            real, fake = kid_scaled(real, *stats), kid_scaled(fake, *stats)
        return kernel_inception_distance(real, fake, 10, 200, seed=0)[0]

    # then KID of the scaled features is the same in both units, while the raw kernel's grows by orders
    assert kid(40 * real + 3, 40 * fake + 3, True) == pytest.approx(kid(real, fake, True), rel=1e-9)
    assert kid(real, fake, True) > 0 and kid(40 * real + 3, 40 * fake + 3, False) > 1e3 * kid(real, fake, False)
    # and a real example has x.x / d = 1 on average, the scale the kernel (x.y / d + 1)^3 was made for
    scaled = kid_scaled(real, real.double().mean(0).numpy(), np.cov(real.double().numpy(), rowvar=False))
    assert float(scaled.square().sum(1).mean() / 16) == pytest.approx(1, rel=1e-2)


# --- k-NN precision / recall, density / coverage --------------------------------------------------------------------


def test_knn_radii_agree_with_scikit_learn() -> None:
    # given more rows than one distance block holds
    x = np.random.default_rng(9).standard_normal((1500, 6))
    # when
    ours = knn_radii(torch.from_numpy(x), k=5).numpy()
    # then: scikit-learn's 6 nearest include the row itself
    reference = NearestNeighbors(n_neighbors=6).fit(x).kneighbors(x)[0][:, -1]
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_precision_recall_density_coverage_by_hand_in_1d() -> None:
    # given real points 0, 1, 2, 3 (k = 1: every real ball has radius 1) and fakes 0.5 and 10 (fake radii 9.5)
    real, fake = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[0.5], [10.0]])
    # when
    pr, dc = precision_recall(real, fake, k=1), density_coverage(real, fake, k=1)
    # then 0.5 is in a real ball, 10 is not; every real point is within 9.5 of a fake;
    # 0.5 lies in the balls of 0 and 1 (density (2 + 0) / (1 * 2)); only 0 and 1 have a fake within 1
    assert pr == {"precision": 0.5, "recall": 1.0}
    assert dc == {"density": 1.0, "coverage": 0.5}


def test_precision_recall_and_coverage_are_one_for_identical_sets_and_zero_for_disjoint() -> None:
    # given a set, itself, and a copy shifted far away
    real = torch.randn(400, 8)
    far = real + 100.0
    # when
    same_pr, same_dc = precision_recall(real, real.clone(), 5), density_coverage(real, real.clone(), 5)
    far_pr, far_dc = precision_recall(real, far, 5), density_coverage(real, far, 5)
    # then
    assert same_pr == {"precision": 1.0, "recall": 1.0}
    assert same_dc["coverage"] == 1.0 and same_dc["density"] >= 1.0
    assert far_pr == {"precision": 0.0, "recall": 0.0}
    assert far_dc == {"density": 0.0, "coverage": 0.0}


def test_precision_stays_high_and_recall_drops_when_fakes_cover_one_mode() -> None:
    # given real data in two far-apart clusters and fakes from only the first
    left, right = torch.randn(300, 4), torch.randn(300, 4) + 20.0
    real, fake = torch.cat([left, right]), torch.randn(300, 4)
    # when
    pr, dc = precision_recall(real, fake, 5), density_coverage(real, fake, 5)
    # then mode dropping shows as recall and coverage near one half, quality as precision near one
    assert pr["precision"] > 0.9 and 0.4 < pr["recall"] < 0.55, pr
    assert 0.4 < dc["coverage"] < 0.55, dc


@pytest.mark.parametrize(("n_real", "n_fake", "k"), [(300, 300, 5), (500, 200, 3)])
def test_precision_recall_density_coverage_agree_with_the_prdc_package(n_real: int, n_fake: int, k: int) -> None:
    # given continuous features (no distance ties, where prdc's strict < and cdgan's closed balls could differ)
    # from overlapping but different distributions, so no metric sits at 0 or 1
    rng = np.random.default_rng(k)
    real = rng.standard_normal((n_real, 10))
    fake = rng.standard_normal((n_fake, 10)) * 1.3 + 0.4
    # when
    reference = compute_prdc(real, fake, nearest_k=k)
    ours = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k) | density_coverage(
        torch.from_numpy(real), torch.from_numpy(fake), k
    )
    # then every figure is the reference implementation's (Naeem et al.'s own code)
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1 and 0 < ours["coverage"] < 1, ours
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(reference[name]), abs=1e-12), name


def test_knn_needs_more_rows_than_k() -> None:
    with pytest.raises(ValueError, match="k = 5"):
        knn_radii(torch.randn(5, 2), 5)


# --- mode coverage -------------------------------------------------------------------------------------------------

CENTRES = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])


def test_mode_coverage_all_points_on_centres() -> None:
    # given one sample exactly on each centre
    result = mode_coverage(CENTRES.copy(), CENTRES, std=0.05)
    # then all modes are covered and every sample is high quality
    assert result == {"modes": 4.0, "hq_frac": 1.0, "spread": 0.0}  # one sample a mode: no spread to measure


def test_mode_coverage_points_far_away() -> None:
    # given samples well outside 3 std of every centre
    x = np.array([[1.0, 1.0], [10.0, 10.0], [-5.0, 0.0]])
    # when
    result = mode_coverage(x, CENTRES, std=0.05)
    # then
    assert result == {"modes": 0.0, "hq_frac": 0.0, "spread": 0.0}


def test_mode_coverage_counts_each_mode_once_and_uses_3_std() -> None:
    # given three samples on mode 0 (one at 2.9 std), one on mode 3 at 3.1 std (too far), one far off
    std = 0.1
    x = np.array([[0.0, 0.0], [0.01, 0.0], [0.29, 0.0], [2.31, 2.0], [1.0, 1.0]])
    # when
    result = mode_coverage(x, CENTRES, std=std)
    # then only mode 0 is covered; 3 of 5 samples are within 3 std
    assert result["modes"] == 1.0
    assert result["hq_frac"] == pytest.approx(3 / 5)


def _mixture_draws(n: int, centres: np.ndarray, std: float, seed: int, n_modes: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    component = rng.integers(n_modes or len(centres), size=n)
    return centres[component] + std * rng.standard_normal((n, 2))


GRID = np.array([(i, j) for i in range(-4, 5, 2) for j in range(-4, 5, 2)], dtype=float)


def test_perfect_sampler_has_spread_one_and_mmd_near_zero() -> None:
    # given fresh draws of the true grid25 mixture, scored against other fresh draws
    std = 0.05
    x, truth = _mixture_draws(2500, GRID, std, 1), _mixture_draws(2500, GRID, std, 2)
    # when
    coverage, mmd = mode_coverage(x, GRID, std), mixture_mmd(x, truth, std)
    # then each mode is as wide as the data's (the 3-std cut trims ~1 %) and the distance is noise
    assert coverage["modes"] == 25
    assert 0.9 < coverage["spread"] < 1.1, coverage
    assert abs(mmd) < 1e-3, mmd


def test_point_mass_sampler_has_spread_zero_and_a_large_mmd() -> None:
    # given every sample exactly on a mode centre: all modes covered, each collapsed to a point
    std = 0.05
    rng = np.random.default_rng(1)
    x = GRID[rng.integers(25, size=2500)]
    truth = _mixture_draws(2500, GRID, std, 2)
    # when
    coverage, mmd = mode_coverage(x, GRID, std), mixture_mmd(x, truth, std)
    # then coverage alone would call it perfect; spread and the distance do not
    assert coverage["modes"] == 25 and coverage["hq_frac"] == 1.0
    assert coverage["spread"] == 0.0
    assert mmd > 10 * abs(mixture_mmd(_mixture_draws(2500, GRID, std, 3), truth, std)), mmd


def test_half_the_modes_gives_a_distance_clearly_above_a_perfect_sampler() -> None:
    std = 0.05
    truth = _mixture_draws(2500, GRID, std, 2)
    perfect = mixture_mmd(_mixture_draws(2500, GRID, std, 1), truth, std)
    half = mixture_mmd(_mixture_draws(2500, GRID, std, 1, n_modes=12), truth, std)
    assert half > 0.01 > 10 * abs(perfect), (half, perfect)


def test_spread_measures_the_width_of_each_mode() -> None:
    # given samples twice as wide as the data around every mode
    x = _mixture_draws(5000, GRID, 0.1, 1)
    # when scored with the data's std 0.05 (the 3-std cut keeps only the mode's core)
    spread = mode_coverage(x, GRID, 0.05)["spread"]
    # then the spread is well above 1 (a 3-std cut of a 2x wider Gaussian has std ~1.4x the data's)
    assert spread > 1.3, spread


def test_mixture_mmd_matches_a_direct_computation() -> None:
    # given two small sets, and the unbiased MMD^2 written out with explicit loops
    rng = np.random.default_rng(0)
    x, y, std = rng.normal(size=(7, 2)), rng.normal(size=(5, 2)) + 0.3, 0.5

    def k(a: np.ndarray, b: np.ndarray) -> float:
        d2 = float(((a - b) ** 2).sum())
        return (np.exp(-d2 / (2 * std**2)) + np.exp(-d2 / (2 * (10 * std) ** 2))) / 2

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (7 * 5)
    # then
    assert mixture_mmd(x, y, std) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
