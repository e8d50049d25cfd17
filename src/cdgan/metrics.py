"""Evaluation metrics: streaming feature statistics and Inception Score, the Frechet distance, KID,
k-NN precision/recall and density/coverage, 2-D mode coverage."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

FID_EPS = 1e-6  # added to both covariance diagonals when they are not usable as they are (as pytorch-fid)
_PSD_TOL = 1e-9  # eigenvalues down to -_PSD_TOL * mean variance count as round-off, not as indefiniteness
_CHUNK = 1024  # rows of a pairwise-distance block: k-NN memory is O(_CHUNK * N), not O(N^2)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FID_EPS
) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Hand-written rather than scipy.linalg.sqrtm (as pytorch-fid uses): tr (S1 S2)^(1/2) equals
    tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD matrix, so two symmetric eigendecompositions
    replace a general Schur-based square root. That is faster at d = 2048 (benchmarks/) and has no
    complex round-off; eigenvalues below zero (round-off on singular covariances) are clipped to zero.

    When a covariance is not positive semi-definite within round-off, or the result is not finite, it
    warns and retries with `eps` * I added to both covariances, as pytorch-fid does. ValueError for
    non-finite inputs (no epsilon mends those) or a result that stays non-finite.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("frechet_distance: non-finite mean or covariance; are the features finite?")
    if _is_psd(sigma1) and _is_psd(sigma2):
        distance = _frechet(mu1, sigma1, mu2, sigma2)
        if np.isfinite(distance):
            return distance
    warnings.warn(
        f"frechet_distance: a covariance is not positive semi-definite, or the result is not finite; "
        f"adding {eps:g} * I to both covariances",
        RuntimeWarning,
        stacklevel=2,
    )
    offset = eps * np.eye(len(mu1))
    distance = _frechet(mu1, sigma1 + offset, mu2, sigma2 + offset)
    if not np.isfinite(distance):
        raise ValueError("frechet_distance: not finite even with eps * I added to the covariances")
    return distance


def _is_psd(sigma: np.ndarray) -> bool:
    """Symmetric and no eigenvalue below -_PSD_TOL * mean variance (a Cholesky is ~10x cheaper than eigh)."""
    if not np.allclose(sigma, sigma.T, rtol=1e-8, atol=0):
        return False
    jitter = _PSD_TOL * max(np.trace(sigma) / len(sigma), np.finfo(np.float64).tiny)
    try:
        np.linalg.cholesky(sigma + jitter * np.eye(len(sigma)))
    except np.linalg.LinAlgError:
        return False
    return True


def _frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    w, v = np.linalg.eigh(sigma1)
    half = v * np.sqrt(np.clip(w, 0, None))  # S1 = half half^T, half = V D^(1/2)
    # half^T S2 half = V^T (S1^(1/2) S2 S1^(1/2)) V: same eigenvalues, one matrix product fewer than forming S1^(1/2)
    inner = half.T @ sigma2 @ half
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


class _Sums(nn.Module):
    """Float64 running sums that move with `.to(device)`; `reset` zeroes them.

    Hand-written rather than torchmetrics' Metric base: importing torchmetrics takes seconds (it pulls in
    scipy.signal, matplotlib and torchvision), which every stage process that scores FID would pay at start;
    these sums need none of its machinery (`python benchmarks/run.py --only import_cost` measures the difference).
    """

    def __init__(self, **shapes: tuple[int, ...]) -> None:
        super().__init__()
        for name, shape in shapes.items():
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))

    def reset(self) -> None:
        for buffer in self.buffers():
            buffer.zero_()


class FeatureStats(_Sums):
    """Running mean and covariance of (N, d) features in float64: memory is O(d^2), not O(N d)."""

    def __init__(self, dim: int) -> None:
        super().__init__(total=(dim,), outer=(dim, dim), count=())

    def update(self, features: Tensor) -> None:  # (B, d)
        features = features.detach().to(torch.float64)
        self.total += features.sum(0)
        self.outer += features.T @ features
        self.count += len(features)

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.count
        mean = self.total / n
        cov = (self.outer - n * torch.outer(mean, mean)) / (n - 1)  # unbiased, as np.cov
        return mean.cpu().numpy(), cov.cpu().numpy()


class InceptionScore(_Sums):
    """exp(E_x KL(p(y|x) || p(y))) over all samples as one split, streamed: O(classes) memory.

    Not torchmetrics' InceptionScore: that one keeps every logit, splits after an unseeded shuffle and
    runs its own network; on one split (`splits=1`) both give the same number (tests/test_metrics.py).
    With cdgan's domain classifier as the network this is the *domain* classifier's score.
    """

    def __init__(self, n_classes: int) -> None:
        super().__init__(prob_sum=(n_classes,), neg_entropy_sum=(), count=())

    def update(self, logits: Tensor) -> None:  # (B, n_classes)
        log_p = logits.detach().to(torch.float64).log_softmax(1)
        p = log_p.exp()
        self.prob_sum += p.sum(0)
        self.neg_entropy_sum += (p * log_p).sum()
        self.count += len(logits)

    def compute(self) -> float:
        # E_x KL(p(y|x) || p(y)) = E_x sum_y p log p - sum_y p(y) log p(y), with p(y) the mean of p(y|x)
        p_y = self.prob_sum / self.count
        mean_kl = self.neg_entropy_sum / self.count - torch.xlogy(p_y, p_y).sum()
        return float(mean_kl.exp())


def kernel_inception_distance(
    real: Tensor, fake: Tensor, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3; mean and std over subsets.

    The MMD is torchmetrics' own (`poly_mmd`), in float64. Not its KernelInceptionDistance class: that
    draws subsets from the unseeded global RNG (a DVC stage must be repeatable) and runs its own
    feature network, while cdgan featurizes each sample once for every metric.
    """
    from torchmetrics.image.kid import poly_mmd  # imported here: its import cost only where KID is scored (_Sums)

    if subset_size > min(len(real), len(fake)):
        raise ValueError(f"subset_size {subset_size} > samples ({len(real)} real, {len(fake)} fake)")
    gen = torch.Generator().manual_seed(seed)
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    scores = torch.stack(
        [
            poly_mmd(
                real[torch.randperm(len(real), generator=gen)[:subset_size].to(real.device)],
                fake[torch.randperm(len(fake), generator=gen)[:subset_size].to(fake.device)],
            )
            for _ in range(subsets)
        ]
    )
    return float(scores.mean()), float(scores.std(unbiased=False))


def kid_scaled(features: Tensor, mu: np.ndarray, sigma: np.ndarray) -> Tensor:
    """Features (N, d) in float64 on the scale KID's kernel (x.y / d + 1)^3 was made for, Inception's pool3
    features with x.y / d below 1: centred on the reference mean `mu` and divided by its root mean variance
    per dimension, (tr `sigma` / d)^(1/2), so a reference x has x.x / d = 1 on average and the dimensions keep
    their relative scales, as FID sees them.

    Features far above that scale (unnormalised ReLU outputs, such as the domain classifier's) make the cubed
    kernel's spread across pairs swamp the difference between two sets, and KID is noise.
    """
    scale = math.sqrt(np.trace(sigma) / len(mu))
    return (features.double() - torch.from_numpy(np.asarray(mu)).to(features.device, torch.float64)) / scale


def knn_radii(x: Tensor, k: int) -> Tensor:
    """(N,) distance from each row of x (N, d) to its k-th nearest other row."""
    if not 0 < k < len(x):
        raise ValueError(f"k = {k} needs more than k rows (got {len(x)})")
    # k + 1 smallest: the row itself (distance 0) is one of them
    return torch.cat([torch.cdist(block, x).topk(k + 1, largest=False).values[:, -1] for block in x.split(_CHUNK)])


def _centred(real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """Both sets in float64, less the real mean: cdist's |a|^2 + |b|^2 - 2 a.b loses no digits to large norms."""
    centre = real.double().mean(0)
    return real.double() - centre, fake.double() - centre


def precision_recall(real: Tensor, fake: Tensor, k: int) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) on (N, d) real and (M, d) fake features.

    precision: share of fake samples inside some real k-NN ball (a ball reaches its centre's k-th
    nearest neighbour, boundary included); recall: share of real samples inside some fake k-NN ball.
    """
    real, fake = _centred(real, fake)
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    precision = torch.cat([(torch.cdist(block, real) <= real_radii).any(1) for block in fake.split(_CHUNK)])
    recall = torch.cat([(torch.cdist(block, fake) <= fake_radii).any(1) for block in real.split(_CHUNK)])
    return {"precision": float(precision.double().mean()), "recall": float(recall.double().mean())}


def density_coverage(real: Tensor, fake: Tensor, k: int) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) on (N, d) real and (M, d) fake features, real k-NN balls only.

    density: real balls holding each fake sample, / k, averaged (about 1 when the distributions match,
    above 1 where fakes crowd into dense real regions); coverage: share of real balls holding a fake.
    """
    real, fake = _centred(real, fake)
    real_radii = knn_radii(real, k)
    counts = torch.cat([(torch.cdist(block, real) <= real_radii).sum(1) for block in fake.split(_CHUNK)])
    nearest_fake = torch.cat([torch.cdist(block, fake).min(1).values for block in real.split(_CHUNK)])
    return {
        "density": float(counts.double().mean() / k),
        "coverage": float((nearest_fake <= real_radii).double().mean()),
    }


def mode_coverage(x: np.ndarray, centres: np.ndarray, std: float) -> dict[str, float]:
    """Modes covered, high-quality fraction and spread of 2-D samples (VEEGAN / PacGAN protocol, plus spread).

    A sample is high quality when it lies within 3 std of its nearest centre; a mode is covered when
    at least one high-quality sample lands on it. `spread` is the median, over modes holding two or more
    high-quality samples, of their std (root mean of the two axes' variances) / the true `std`: about 1
    for a sampler that matches the data, 0 for one that collapses each mode to a point (0 when no mode
    holds two samples). The 3-std cut trims a true 2-D Gaussian's std by only 1 %.
    """
    dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)  # (N, M)
    nearest = dist.argmin(1)
    is_hq = dist[np.arange(len(x)), nearest] < 3 * std
    covered = np.unique(nearest[is_hq])
    stds = [
        np.sqrt(x[is_hq & (nearest == m)].var(0, ddof=1).mean()) for m in covered if (nearest[is_hq] == m).sum() > 1
    ]
    spread = float(np.median(stds) / std) if stds else 0.0
    return {"modes": float(len(covered)), "hq_frac": float(is_hq.mean()), "spread": spread}


def mixture_mmd(x: np.ndarray, y: np.ndarray, std: float) -> float:
    """Unbiased squared MMD between 2-D sample sets x (N, 2) and y (M, 2), kernel the mean of Gaussians of
    bandwidth `std` (a mode's own scale) and 10 * `std`.

    Its expectation is 0 when x and y come from the same distribution, at any sample count. A kernel at
    the mode's scale sees what coarser distances miss at a few thousand samples: a mode collapsed to a
    point (the energy distance and exact Wasserstein-1 of 2,500 grid25 samples rank such a sampler with
    a perfect one, their noise from the mode counts being larger than the collapse) as well as missing
    modes. Hand-written: torchmetrics' only MMD is KID's polynomial kernel on features.
    """
    a, b = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))

    def kernel_sum(u: Tensor, v: Tensor) -> Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for block in u.split(_CHUNK):
            d2 = torch.cdist(block, v).square()
            total += sum((-d2 / (2 * bw**2)).exp().sum() for bw in (std, 10 * std)) / 2
        return total

    n, m = len(a), len(b)
    within_a = (kernel_sum(a, a) - n) / (n * (n - 1))  # each point's kernel with itself is 1: left out
    within_b = (kernel_sum(b, b) - m) / (m * (m - 1))
    return float(within_a + within_b - 2 * kernel_sum(a, b) / (n * m))
