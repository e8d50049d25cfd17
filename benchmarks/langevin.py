"""Share of a training step spent in the Langevin chains (CD-k's negatives), for the shipped models.

The real loop (`cdgan.train.fit`, nothing logged or saved) runs with its chain function (`cdgan.train._refine`)
wrapped in a clock; the share is the chain's time over the whole loop's, per repeat, both in this thread's CPU
time (`time.thread_time`: the loop is single-threaded at OMP_NUM_THREADS=1 and no other user of the machine
moves it), and wall time beside it. The interval is a t-interval over repeats (benchmarks/stats.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
from benchmarks.arms import no_log, torch_globals
from benchmarks.stats import mean_interval, rounded_interval
from benchmarks.timing import REPO, note

from cdgan import train as train_module
from cdgan.data import build_dataset
from cdgan.params import Params, parse_params
from cdgan.presets import read_preset
from cdgan.train import fit, init_state

# each read on top of params.yaml: a preset holds only the keys it changes
PRESETS = {"digits": REPO / "params.yaml", "grid25": REPO / "presets" / "grid25.yaml"}


def _params(dataset: str, steps: int) -> Params:
    raw = read_preset(PRESETS[dataset], REPO / "params.yaml")
    raw["train"] = {**raw["train"], "device": "cpu", "steps": steps, "eval_every": 0}
    return parse_params(raw, f"{PRESETS[dataset].name} (Langevin share)")


@contextmanager
def _clocked_chains(spent: dict[str, float]) -> Iterator[None]:
    """`cdgan.train._refine` with its thread-CPU and wall seconds added to `spent`."""
    real_refine = train_module._refine

    def refine(*args: Any, **kwargs: Any) -> Any:
        cpu, wall = time.thread_time(), time.perf_counter()
        try:
            return real_refine(*args, **kwargs)
        finally:
            spent["cpu"] += time.thread_time() - cpu
            spent["wall"] += time.perf_counter() - wall

    with mock.patch.object(train_module, "_refine", refine):
        yield


def measure_dataset(dataset: str, steps: int, repeats: int) -> dict[str, object]:
    params = _params(dataset, steps)
    x_data = torch.from_numpy(build_dataset(params.data).x)
    shares: dict[str, list[float]] = {"cpu": [], "wall": []}
    step_ms: list[float] = []
    for repeat in range(repeats + 1):  # the first is a warm-up (allocator, autograd set-up), not counted
        spent = {"cpu": 0.0, "wall": 0.0}
        with torch_globals(), _clocked_chains(spent):
            state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
            cpu, wall = time.thread_time(), time.perf_counter()
            fit(state, x_data, params.train, no_log)
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        if repeat:
            shares["cpu"].append(spent["cpu"] / cpu)
            shares["wall"].append(spent["wall"] / wall)
            step_ms.append(cpu / steps * 1e3)
    note(f"  {dataset}: Langevin share of a step (CPU) {[round(s, 3) for s in shares['cpu']]}")
    return {
        "preset": str(PRESETS[dataset].relative_to(REPO)),
        "cd_k": params.train.cd_k,
        "n_critic": params.train.n_critic,
        "real_gp": params.train.real_gp,
        "steps_per_repeat": steps,
        "share_cpu": rounded_interval(mean_interval(shares["cpu"])),
        "share_wall": rounded_interval(mean_interval(shares["wall"])),
        "per_repeat_cpu": [round(s, 4) for s in shares["cpu"]],
        "step_cpu_ms": rounded_interval(mean_interval(step_ms), 3),
    }


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (20, 3) if quick else (30, 4)  # the shares vary by < 1 % between repeats
    out = {}
    for dataset in PRESETS:
        note(f"Langevin share on {dataset}: {repeats} repeats of {steps} steps")
        out[dataset] = measure_dataset(dataset, steps, repeats)
    return {"langevin_share": out}
