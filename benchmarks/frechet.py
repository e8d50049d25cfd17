"""Frechet distance at d = 2048: `cdgan.metrics.frechet_distance` against torchmetrics' and SciPy's paths.

- torchmetrics (1.x, `torchmetrics.image.fid._compute_fid`, what `FrechetInceptionDistance.compute` calls): the
  trace of (S1 S2)^(1/2) as the sum of the square roots of the eigenvalues of S1 S2, a general
  (non-symmetric) eigenproblem, in float64 as the metric keeps its states.
- SciPy (pytorch-fid's `calculate_frechet_distance`): `scipy.linalg.sqrtm` of S1 S2, a Schur-based square root.
- cdgan: two symmetric eigendecompositions (see `frechet_distance`'s docstring).

Agreement is the relative difference of each path's value from cdgan's; time is paired, interleaved repeats
with an interval on each speed-up (benchmarks/stats.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from benchmarks.stats import ratio_interval, rounded_interval, verdict
from benchmarks.timing import Timing, interleaved, median, note, rounded, timed
from torchmetrics.image.fid import _compute_fid

from cdgan.metrics import frechet_distance

GOAL_SPEEDUP = 1.0  # faster than SciPy's path
GOAL_REL_DIFF = 1e-6  # and the same value


def scipy_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance: sqrtm of the product, its real part, the trace."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def torchmetrics_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """torchmetrics' own function on float64 tensors (the dtype FrechetInceptionDistance computes in)."""
    as_t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    return float(_compute_fid(*as_t))


def random_statistics(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a well-conditioned SPD covariance: the sample covariance of 1.5 d Gaussian draws."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d + d // 2))
    return rng.standard_normal(d), a @ a.T / a.shape[1]


PATHS = {"ours": frechet_distance, "torchmetrics": torchmetrics_frechet, "scipy": scipy_frechet}


def measure(quick: bool, d: int = 2048) -> dict[str, object]:
    repeats = 2  # a round is ~20 s CPU (up to 90 s wall under load); the speed-up over SciPy (~3x) is decided by 2
    mu1, sigma1 = random_statistics(d, 1)
    mu2, sigma2 = random_statistics(d, 2)
    values: dict[str, float] = {}

    def arm(name: str, fn: Callable[..., float]) -> Callable[[], Timing]:
        def run() -> None:
            values[name] = fn(mu1, sigma1, mu2, sigma2)

        return lambda: timed(run)

    note(f"Frechet distance at d={d}: cdgan vs torchmetrics vs scipy.linalg.sqrtm, {repeats} interleaved repeats")
    seconds = interleaved({name: arm(name, fn) for name, fn in PATHS.items()}, repeats)
    rel_diff = {name: abs(values[name] - values["ours"]) / abs(values["ours"]) for name in PATHS if name != "ours"}
    speedups = {
        name: {clock: rounded_interval(ratio_interval(seconds[name][clock], seconds["ours"][clock]))
               for clock in ("wall", "cpu")}
        for name in PATHS if name != "ours"
    }  # fmt: skip
    vs_scipy = speedups["scipy"]["cpu"]
    return {
        "frechet_speedup_vs_scipy": vs_scipy,
        "frechet_speedup_vs_scipy_verdict": verdict(vs_scipy["low"], vs_scipy["high"], GOAL_SPEEDUP, "at_least"),
        "frechet_speedup_vs_torchmetrics": speedups["torchmetrics"]["cpu"],
        "frechet_rel_diff": rel_diff["scipy"],
        "frechet_rel_diff_torchmetrics": rel_diff["torchmetrics"],
        "frechet_agreement_verdict": "met" if max(rel_diff.values()) <= GOAL_REL_DIFF else "not met",
        "frechet": {
            "d": d,
            "repeats": repeats,
            "clock_of_headline": "cpu (single-threaded BLAS: its CPU time is its time on an idle core)",
            "speedup_wall": {name: s["wall"] for name, s in speedups.items()},
            **{f"{name}_wall_s": rounded(seconds[name]["wall"]) for name in PATHS},
            **{f"{name}_cpu_s": rounded(seconds[name]["cpu"]) for name in PATHS},
            "median_cpu_s": {name: round(median(seconds[name]["cpu"]), 3) for name in PATHS},
            "values": values,
            "rel_diff_vs_ours": rel_diff,
            "blas_threads": _blas_threads(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def _blas_threads() -> dict[str, int]:
    from threadpoolctl import threadpool_info

    return {f"{pool['internal_api']}:{Path(pool['filepath']).name}": pool["num_threads"] for pool in threadpool_info()}
