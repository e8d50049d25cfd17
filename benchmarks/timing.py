"""What every benchmark shares: interleaved repeats, medians, progress notes and the machine description."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
_START = time.perf_counter()


def note(message: str) -> None:
    """Progress on stderr (stdout carries only the final JSON)."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


class Timing(NamedTuple):
    """Wall seconds, and CPU seconds of this process and its finished children (less sensitive to other
    users of a shared machine: time spent waiting for a core is not counted)."""

    wall: float
    cpu: float

    def __truediv__(self, n: float) -> Timing:
        return Timing(self.wall / n, self.cpu / n)


def _cpu_seconds() -> float:
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


@contextmanager
def stopwatch() -> Iterator[list[Timing]]:
    """`with stopwatch() as t: ...` then `t[0]` is the block's Timing."""
    out: list[Timing] = []
    wall, cpu = time.perf_counter(), _cpu_seconds()
    try:
        yield out
    finally:
        out.append(Timing(time.perf_counter() - wall, _cpu_seconds() - cpu))


def timed(fn: Callable[[], object]) -> Timing:
    with stopwatch() as t:
        fn()
    return t[0]


def interleaved_round(arms: dict[str, Callable[[], Timing]], index: int) -> dict[str, Timing]:
    """One round: every arm once, in the arms' order on even rounds and reversed on odd ones (A B, B A, ...),
    so drift in the machine's load falls on every arm alike instead of on whichever always runs second."""
    names = list(arms) if index % 2 == 0 else list(arms)[::-1]
    out = {}
    for name in names:
        out[name] = timing = arms[name]()
        note(f"  {name}: wall {timing.wall:.4g} s, cpu {timing.cpu:.4g} s")
    return out


def interleaved(arms: dict[str, Callable[[], Timing]], repeats: int) -> dict[str, dict[str, list[float]]]:
    """`repeats` rounds of `interleaved_round`. Returns wall and cpu lists per arm, in round order."""
    out: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in arms}
    for index in range(repeats):
        for name, timing in interleaved_round(arms, index).items():
            out[name]["wall"].append(timing.wall)
            out[name]["cpu"].append(timing.cpu)
    return out


@contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block (this process and its subprocesses), then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of per-round ratios: each pair ran back to back, so slow drift in the load cancels."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


def rounded(values: list[float], digits: int = 4) -> list[float]:
    return [round(v, digits) for v in values]


def machine() -> dict[str, object]:
    import numpy as np
    import scipy
    import torch

    from cdgan.devices import cpu_model

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
