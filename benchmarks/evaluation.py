"""What scoring costs: each path against its baseline in interleaved rounds, as a paired ratio with its interval.

- `frechet`: `cdgan.metrics.frechet_distance` at d = 2048 against torchmetrics' and SciPy's paths, and agreement.
- `features`: domain-classifier features per second, what streaming statistics add to the extraction, and the
  peak memory of streaming `FeatureStats` against np.cov.
- `sampling`: the model's output per sample, Langevin refinement in data or latent space against raw G(z).

    python -m benchmarks.evaluation ARM N    # (internal) one `features` memory arm, in a fresh process
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from benchmarks.harness import REPO, Size, Timing, interleaved, median, note, ratios, rounded, timed
from benchmarks.stats import verdict
from torchmetrics.image.fid import _compute_fid

from cdgan.classifier import FEATURE_DIM, Classifier
from cdgan.metrics import FeatureStats, frechet_distance
from cdgan.models import build_models
from cdgan.params import ModelParams, SampleParams
from cdgan.sampler import draw_samples

# --- frechet

GOAL_SPEEDUP = 1.0  # faster than SciPy's path
GOAL_REL_DIFF = 1e-6  # and the same value
FRECHET_SIZES = {"smoke": 256, "quick": 2048, "full": 2048}  # d: the dimension of Inception features


def scipy_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance: sqrtm of the product, its real part, the trace."""
    covmean = np.real(scipy.linalg.sqrtm(sigma1 @ sigma2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def torchmetrics_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """torchmetrics' own function (`_compute_fid`, what `FrechetInceptionDistance.compute` calls: the eigenvalues
    of S1 S2, a general eigenproblem) on float64 tensors, the dtype the metric keeps its states in."""
    as_t = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    return float(_compute_fid(*as_t))


def random_statistics(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a well-conditioned SPD covariance: the sample covariance of 1.5 d Gaussian draws."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d + d // 2))
    return rng.standard_normal(d), a @ a.T / a.shape[1]


PATHS = {"ours": frechet_distance, "torchmetrics": torchmetrics_frechet, "scipy": scipy_frechet}


def _blas_threads() -> dict[str, int]:
    from threadpoolctl import threadpool_info

    return {f"{pool['internal_api']}:{Path(pool['filepath']).name}": pool["num_threads"] for pool in threadpool_info()}


def frechet(size: Size) -> dict[str, object]:
    """Frechet distance: cdgan's two symmetric eigendecompositions against torchmetrics' and SciPy's paths, the
    speed-up of cdgan's over each (CPU time: single-threaded BLAS) and each path's relative difference from it."""
    d, repeats = FRECHET_SIZES[size], 2  # rounds are long at d = 2048, and the speed-up over SciPy is wide of 1
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
    speedups = ratios(seconds, "ours")  # another path's seconds over cdgan's
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


# --- features

# glibc otherwise raises its mmap threshold as blocks are freed and keeps freed memory in the heap, so the
# resident set would show whatever the allocator happened to retain; fixed thresholds return every large
# block on free, and the peak resident set then follows the live arrays.
_EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
BATCH = 500  # cdgan.reference.feature_stats' batch
SHAPE = (1, 8, 8)  # digits as prepared: one channel, 8 x 8
N_CLASSES = 10
FEATURES_SIZES = {"smoke": (1000, 2), "quick": (10_000, 3), "full": (50_000, 5)}


def _classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(SHAPE[0], N_CLASSES).eval()  # random weights: speed and memory do not depend on them


def _batches(n: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """n digits-sized images in [-1, 1], made one batch at a time so neither arm holds the images."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, BATCH):
        yield torch.rand((min(BATCH, n - start), *SHAPE), generator=gen) * 2 - 1


def streaming_stats(classifier: Classifier, n: int) -> tuple[np.ndarray, np.ndarray]:
    stats = FeatureStats(FEATURE_DIM)
    with torch.no_grad():
        for x in _batches(n):
            stats.update(classifier.features(x))
    return stats.compute()


def batch_stats(classifier: Classifier, n: int) -> tuple[np.ndarray, np.ndarray]:
    """What streaming replaces: keep every feature vector, then mean and np.cov over all of them."""
    with torch.no_grad():
        features = np.concatenate([classifier.features(x).numpy() for x in _batches(n)])  # (n, d)
    return features.mean(0), np.cov(features, rowvar=False)


def extract_only(classifier: Classifier, n: int) -> None:
    """The features alone, each batch dropped: the memory both statistics arms need before their own."""
    with torch.no_grad():
        for x in _batches(n):
            classifier.features(x)


MEMORY_ARMS = {"extract_only": extract_only, "streaming": streaming_stats, "batch": batch_stats}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_in_child(arm: str, n: int) -> dict[str, float]:
    """Run in a subprocess: peak resident-set growth (MB) while `arm` computes the statistics of n samples.

    Torch tensors are invisible to tracemalloc, so the resident set is the one measure that sees both arms."""
    classifier = _classifier()
    for warm in MEMORY_ARMS.values():
        warm(classifier, 2 * BATCH)  # allocator, thread pools and lazy imports are paid before the baseline
    baseline = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set (Linux >= 4.0)
    MEMORY_ARMS[arm](classifier, n)
    return {"peak_mb": (_status_kb("VmHWM") - baseline) / 1024, "baseline_mb": baseline / 1024}


def _peak_mb(arm: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.evaluation", arm, str(n)],
        cwd=REPO,
        env=os.environ | _EXACT_MALLOC,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def features(size: Size) -> dict[str, object]:
    """Feature extraction per second on digits-sized images; streaming statistics (extraction and
    `FeatureStats.update`) over the extraction alone, paired by round; and the growth of the peak resident set
    while the statistics of n samples are computed, one fresh subprocess per arm (VmHWM, reset after imports and
    a warm-up). `extract_only`'s peak (the batch activations) is the floor both statistics arms share."""
    n, repeats = FEATURES_SIZES[size]
    classifier = _classifier()
    images = torch.cat(list(_batches(n)))  # (n, 1, 8, 8), made before timing

    def extract() -> None:
        with torch.no_grad():
            for x in images.split(BATCH):
                classifier.features(x)

    def stream() -> None:
        stats = FeatureStats(FEATURE_DIM)
        with torch.no_grad():
            for x in images.split(BATCH):
                stats.update(classifier.features(x))

    note(f"feature extraction: {n} digits-sized images, batch {BATCH}, {repeats} repeats")
    extract(), stream()  # warm-up
    seconds = interleaved({"extract": lambda: timed(extract), "streaming_stats": lambda: timed(stream)}, repeats)
    note(f"peak memory of feature statistics at {n} x {FEATURE_DIM}: one subprocess per arm")
    peaks = {arm: _peak_mb(arm, n) for arm in MEMORY_ARMS}
    mu_s, cov_s = streaming_stats(classifier, 5 * BATCH)
    mu_b, cov_b = batch_stats(classifier, 5 * BATCH)
    return {
        "feature_throughput": round(n / median(seconds["extract"]["wall"]), 1),
        "feature_throughput_cpu": round(n / median(seconds["extract"]["cpu"]), 1),
        "stats_update_cost": ratios(seconds, "extract")["streaming_stats"],  # over extraction alone
        "stats_peak_mb": {arm: round(peak["peak_mb"], 2) for arm, peak in peaks.items()},
        "features": {
            "n": n,
            "dim": FEATURE_DIM,
            "batch": BATCH,
            "image_shape": list(SHAPE),
            "repeats": repeats,
            "wall_s": {arm: rounded(s["wall"]) for arm, s in seconds.items()},
            "baseline_rss_mb": {arm: round(peak["baseline_mb"], 1) for arm, peak in peaks.items()},
            "feature_matrix_mb": round(n * FEATURE_DIM * 4 / 2**20, 2),  # float32 (n, d): what batch must hold
            "streaming_vs_batch_max_abs_diff": {
                "mean": float(np.abs(mu_s - mu_b).max()),
                "cov": float(np.abs(cov_s - cov_b).max()),
            },
        },
    }


# --- sampling

SHAPES = {"digits": (1, 8, 8), "grid25": (2,)}
N = 500  # samples a call, as `evaluate` draws them
SAMPLING_SIZES = {"smoke": (5, 2), "quick": (20, 3), "full": (100, 7)}


def _sampling_arm(shape: tuple[int, ...], sampling: SampleParams) -> Callable[[], Timing]:
    torch.manual_seed(0)
    generator, energy = build_models(ModelParams(), shape)
    return lambda: timed(lambda: draw_samples(generator, energy, N, 0, sampling)) / N


def sampling(size: Size) -> dict[str, object]:
    """Cost per sample of Langevin refinement in data or latent space against raw G(z), untrained networks of the
    shipped params.yaml (cost does not depend on the weights); a latent step also runs the generator forward
    and backward, a data step only E."""
    steps, repeats = SAMPLING_SIZES[size]
    out: dict[str, object] = {}
    for name, shape in SHAPES.items():
        note(f"sampling {name}: raw, {steps} Langevin steps in data and in latent space")
        arms = {
            "raw": _sampling_arm(shape, SampleParams()),
            "data": _sampling_arm(shape, SampleParams(space="data", langevin_steps=steps, temperature=1.0)),
            "latent": _sampling_arm(shape, SampleParams(space="latent", langevin_steps=steps, temperature=1.0)),
        }
        seconds = interleaved(arms, repeats)
        vs_raw = ratios(seconds, "raw", ("wall",), digits=3)
        out[f"sampling_{name}"] = {
            "langevin_steps": steps,
            "repeats": repeats,
            **{f"{arm}_us_per_sample": round(median(s["wall"]) * 1e6, 2) for arm, s in seconds.items()},
            **{f"{space}_vs_raw": vs_raw[space]["wall"] for space in ("data", "latent")},
            "latent_vs_data": ratios(seconds, "data", ("wall",), digits=3)["latent"]["wall"],
        }
    return out


if __name__ == "__main__":
    print(json.dumps(_peak_in_child(sys.argv[1], int(sys.argv[2]))))
