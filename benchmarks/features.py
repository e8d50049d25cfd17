"""Domain-classifier features per second, and peak memory of streaming `FeatureStats` against np.cov.

Peak memory is measured in a fresh subprocess per arm: the growth of the peak resident set (VmHWM, reset
after imports and a warm-up) while the statistics of n samples are computed. `extract_only` computes
the features and drops them: its peak (the batch activations) is the floor both statistics arms share.
Torch tensors are invisible to tracemalloc, so the resident set is the one measure that sees both arms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from benchmarks.timing import REPO, interleaved, median, note, rounded, timed

from cdgan.classifier import FEATURE_DIM, Classifier
from cdgan.metrics import FeatureStats

# glibc otherwise raises its mmap threshold as blocks are freed and keeps freed memory in the heap, so the
# resident set would show whatever the allocator happened to retain; fixed thresholds return every large
# block on free, and the peak resident set then follows the live arrays.
_EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
BATCH = 500  # cdgan.reference.feature_stats' batch
SHAPE = (1, 8, 8)  # digits as prepared: one channel, 8 x 8
N_CLASSES = 10


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


ARMS = {"extract_only": extract_only, "streaming": streaming_stats, "batch": batch_stats}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def _peak_in_child(arm: str, n: int) -> dict[str, float]:
    """Run in a subprocess: peak resident-set growth (MB) while `arm` computes the statistics of n samples."""
    classifier = _classifier()
    for warm in ARMS.values():
        warm(classifier, 2 * BATCH)  # allocator, thread pools and lazy imports are paid before the baseline
    baseline = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set (Linux >= 4.0)
    ARMS[arm](classifier, n)
    return {"peak_mb": (_status_kb("VmHWM") - baseline) / 1024, "baseline_mb": baseline / 1024}


def _peak_mb(arm: str, n: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.features", arm, str(n)],
        cwd=REPO,
        env=os.environ | _EXACT_MALLOC,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def measure(quick: bool) -> dict[str, object]:
    n, repeats = (10_000, 3) if quick else (50_000, 5)
    classifier = _classifier()
    images = torch.cat(list(_batches(n)))  # (n, 1, 8, 8), made before timing

    def extract() -> None:
        with torch.no_grad():
            for x in images.split(BATCH):
                classifier.features(x)

    note(f"feature extraction: {n} digits-sized images, batch {BATCH}, {repeats} repeats")
    extract()  # warm-up
    seconds = interleaved({"features": lambda: timed(extract)}, repeats)["features"]
    note(f"peak memory of feature statistics at {n} x {FEATURE_DIM}: one subprocess per arm")
    peaks = {arm: _peak_mb(arm, n) for arm in ARMS}
    mu_s, cov_s = streaming_stats(classifier, 5 * BATCH)
    mu_b, cov_b = batch_stats(classifier, 5 * BATCH)
    return {
        "feature_throughput": round(n / median(seconds["wall"]), 1),
        "feature_throughput_cpu": round(n / median(seconds["cpu"]), 1),
        "stats_peak_mb": {arm: round(peak["peak_mb"], 2) for arm, peak in peaks.items()},
        "features": {
            "n": n,
            "dim": FEATURE_DIM,
            "batch": BATCH,
            "image_shape": list(SHAPE),
            "repeats": repeats,
            "wall_s": rounded(seconds["wall"]),
            "baseline_rss_mb": {arm: round(peak["baseline_mb"], 1) for arm, peak in peaks.items()},
            "feature_matrix_mb": round(n * FEATURE_DIM * 4 / 2**20, 2),  # float32 (n, d): what batch must hold
            "streaming_vs_batch_max_abs_diff": {
                "mean": float(np.abs(mu_s - mu_b).max()),
                "cov": float(np.abs(cov_s - cov_b).max()),
            },
        },
    }


if __name__ == "__main__":
    print(json.dumps(_peak_in_child(sys.argv[1], int(sys.argv[2]))))
