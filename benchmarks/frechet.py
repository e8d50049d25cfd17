"""Frechet distance at d = 2048: `cdgan.metrics.frechet_distance` against pytorch-fid's SciPy computation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
from benchmarks.timing import Timing, interleaved, median, note, rounded, timed

from cdgan.metrics import frechet_distance


def scipy_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance: sqrtm of the product, its real part, the trace."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_statistics(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a well-conditioned SPD covariance: the sample covariance of 1.5 d Gaussian draws."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d + d // 2))
    return rng.standard_normal(d), a @ a.T / a.shape[1]


def measure(quick: bool, d: int = 2048) -> dict[str, object]:
    repeats = 1 if quick else 5
    mu1, sigma1 = random_statistics(d, 1)
    mu2, sigma2 = random_statistics(d, 2)
    values: dict[str, float] = {}

    def arm(name: str, fn: Callable[..., float]) -> Callable[[], Timing]:
        def run() -> None:
            values[name] = fn(mu1, sigma1, mu2, sigma2)

        return lambda: timed(run)

    note(f"Frechet distance at d={d}: ours vs scipy.linalg.sqrtm, {repeats} interleaved repeat(s)")
    seconds = interleaved({"scipy": arm("scipy", scipy_frechet), "ours": arm("ours", frechet_distance)}, repeats)
    scipy_s, ours_s = median(seconds["scipy"]["wall"]), median(seconds["ours"]["wall"])
    return {
        "frechet_speedup_vs_scipy": round(scipy_s / ours_s, 3),
        "frechet_rel_diff": abs(values["ours"] - values["scipy"]) / abs(values["scipy"]),
        "frechet": {
            "d": d,
            "repeats": repeats,
            "scipy_wall_s": rounded(seconds["scipy"]["wall"]),
            "ours_wall_s": rounded(seconds["ours"]["wall"]),
            "scipy_cpu_s": rounded(seconds["scipy"]["cpu"]),
            "ours_cpu_s": rounded(seconds["ours"]["cpu"]),
            "speedup_cpu": round(median(seconds["scipy"]["cpu"]) / median(seconds["ours"]["cpu"]), 3),
            "value_ours": values["ours"],
            "value_scipy": values["scipy"],
            "blas_threads": _blas_threads(),
        },
    }


def _blas_threads() -> dict[str, int]:
    from threadpoolctl import threadpool_info

    return {f"{pool['internal_api']}:{Path(pool['filepath']).name}": pool["num_threads"] for pool in threadpool_info()}
