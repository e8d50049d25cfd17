"""Confidence intervals for benchmark ratios, verdicts that follow them, and sequential stopping.

A ratio comes from paired, interleaved repeats: each pair ran back to back (A B, then B A), so slow drift in
the machine's load falls on both arms alike. The interval is a paired t-interval on the log of the per-pair
ratios, mapped back: a ratio of times is positive and skewed, its log is close to symmetric, and the mean log
is the log of the geometric-mean ratio. A percentile bootstrap over the pairs is kept beside it as a check.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95
MIN_PAIRS = 5  # fewer pairs give a t quantile so large (12.7 at 2 pairs) that no bound is reachable
Direction = Literal["at_least", "at_most"]
MET, NOT_MET, CANNOT_TELL = "met", "not met", "cannot tell at this noise"


def ratio_interval(numerators: list[float], denominators: list[float], level: float = LEVEL) -> dict[str, object]:
    """Paired t-interval on log(numerator / denominator) per pair, as a ratio: estimate (geometric mean),
    low, high, half-width ((high - low) / 2, in ratio units), the number of pairs and the per-pair ratios.

    With one pair the interval is unbounded (low 0, high inf): one pair cannot say how noisy it is."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"need equal, non-empty lists (got {len(numerators)} and {len(denominators)})")
    logs = [math.log(a / b) for a, b in zip(numerators, denominators, strict=True)]
    n = len(logs)
    center = statistics.fmean(logs)
    if n < 2:
        low, high = 0.0, math.inf
    else:
        half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(logs) / math.sqrt(n)
        low, high = math.exp(center - half), math.exp(center + half)
    return {
        "estimate": math.exp(center),
        "low": low,
        "high": high,
        "half_width": (high - low) / 2,
        "pairs": n,
        "level": level,
        "method": "paired t on log ratios",
        "per_pair": [a / b for a, b in zip(numerators, denominators, strict=True)],
    }


def bootstrap_ratio_interval(
    numerators: list[float], denominators: list[float], level: float = LEVEL, draws: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap of the geometric-mean ratio, resampling whole pairs (never splitting one)."""
    logs = np.log(np.asarray(numerators, dtype=float) / np.asarray(denominators, dtype=float))
    rng = np.random.default_rng(seed)
    means = logs[rng.integers(len(logs), size=(draws, len(logs)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.exp(np.quantile(means, tail))), float(np.exp(np.quantile(means, 1 - tail)))


def mean_interval(values: list[float], level: float = LEVEL) -> dict[str, object]:
    """t-interval on a plain mean (e.g. seconds to a target over training seeds)."""
    if not values:
        raise ValueError("need at least one value")
    n, center = len(values), statistics.fmean(values)
    half = (
        math.inf
        if n < 2
        else float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    )
    return {"estimate": center, "low": center - half, "high": center + half, "half_width": half, "n": n,
            "level": level, "method": "t-interval on the mean"}  # fmt: skip


def shifted(interval: dict[str, object], by: float) -> dict[str, object]:
    """The same interval for ratio + by (ratio - 1 is an overhead fraction); per-pair values shift too."""
    out = dict(interval)
    for key in ("estimate", "low", "high"):
        out[key] = float(interval[key]) + by  # type: ignore[arg-type]
    if "per_pair" in interval:
        out["per_pair"] = [v + by for v in interval["per_pair"]]  # type: ignore[union-attr]
    return out


def verdict(low: float, high: float, goal: float, direction: Direction) -> str:
    """'met' when the whole interval is on the goal's side, 'not met' when all of it is on the other side,
    otherwise the noise leaves it open. A point estimate alone never decides."""
    if direction == "at_least":
        return MET if low >= goal else NOT_MET if high < goal else CANNOT_TELL
    return MET if high <= goal else NOT_MET if low > goal else CANNOT_TELL


def rounded_interval(interval: dict[str, object], digits: int = 4) -> dict[str, object]:
    """The interval for JSON: floats rounded, per-pair lists too."""

    def r(value: object) -> object:
        if isinstance(value, float):
            return value if math.isinf(value) or math.isnan(value) else round(value, digits)
        if isinstance(value, list):
            return [r(v) for v in value]
        return value

    return {key: r(value) for key, value in interval.items()}


def run_pairs(
    run_pair: Callable[[int], None],
    half_width: Callable[[], float],
    bound: float,
    min_pairs: int,
    max_pairs: int,
    max_seconds: float,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, object]:
    """Sequential stopping: call `run_pair(index)` until, after at least `min_pairs`, `half_width()` is at most
    `bound`, or a cap is hit (`max_pairs`, or `max_seconds` of this loop; a pair is never cut short, and no pair
    starts once the next one would be expected to end past `max_seconds`, but two always run). Returns how it
    stopped.

    Stopping on the interval's width makes its coverage slightly below nominal (the loop stops on a lucky
    narrow draw more often than on an unlucky wide one); the minimum of pairs keeps that small."""
    start = clock()
    pairs = 0
    while True:
        run_pair(pairs)
        pairs += 1
        elapsed = clock() - start
        width = half_width()
        if pairs >= min_pairs and width <= bound:
            stopped = "bound met"
            break
        if pairs >= max_pairs:
            stopped = "pair cap"
            break
        if pairs >= 2 and elapsed + elapsed / pairs > max_seconds:  # two pairs at least: one gives no interval
            stopped = "time cap"
            break
    return {"pairs": pairs, "stopped": stopped, "is_cap_hit": stopped != "bound met", "bound": bound,
            "half_width": width, "seconds": clock() - start, "min_pairs": min_pairs, "max_pairs": max_pairs,
            "max_seconds": max_seconds}  # fmt: skip
