"""Evaluation metrics: streaming feature statistics, the Frechet distance, 2-D mode coverage."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    Hand-written rather than scipy.linalg.sqrtm (as pytorch-fid uses): tr (S1 S2)^(1/2) equals
    tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD matrix, so two symmetric eigendecompositions
    replace a general Schur-based square root. That is faster at d = 2048 and has no complex
    round-off; eigenvalues below zero (round-off on singular covariances) are clipped to zero.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^(1/2)
    inner = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


class FeatureStats(Metric):
    """Running mean and covariance of (N, d) features in float64: memory is O(d^2), not O(N d)."""

    full_state_update = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("outer", torch.zeros(dim, dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

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


def mode_coverage(x: np.ndarray, centres: np.ndarray, std: float) -> dict[str, float]:
    """Modes covered and high-quality fraction of 2-D samples (VEEGAN / PacGAN protocol).

    A sample is high quality when it lies within 3 std of its nearest centre; a mode is covered when
    at least one high-quality sample lands on it.
    """
    dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=-1)  # (N, M)
    nearest = dist.argmin(1)
    is_hq = dist[np.arange(len(x)), nearest] < 3 * std
    covered = np.unique(nearest[is_hq])
    return {"modes": float(len(covered)), "hq_frac": float(is_hq.mean())}
