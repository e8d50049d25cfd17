"""The GPU path on CUDA: examples/s of the real loop (`cdgan.train.fit`) for each GPU-path setting against
plain fp32 in the same run, GPU utilisation while it trains, and the host syncs a step makes.

Without a CUDA device it reports `{"gpu": {"available": false}}` and measures nothing: the CPU figures are
the other benchmarks'. The setting is stacked-digits at 32 x 32 (the conv nets), batch 256, CD-5: big enough
that the GPU, not kernel launches, sets the pace. The first call of every arm (cuDNN autotuning, compilation)
is a warm-up outside the clock.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from benchmarks.arms import fit_arm, no_log, project_params
from benchmarks.stats import ratio_interval, rounded_interval
from benchmarks.timing import interleaved, median, note

from cdgan.data import build_dataset, device_or_stream
from cdgan.params import Params
from cdgan.train import fit, init_state

SETTING = {"batch_size": 256, "cd_k": 5, "eval_every": 0, "real_gp": 0.0}  # compile does not differentiate twice
SYNC_STEPS = 20
# train params per arm; compile needs no spectral norm and no gradient penalty (checked by Params): none has them
VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {},
    "amp": {"amp": True},
    "channels_last": {"channels_last": True},
    "amp_channels_last": {"amp": True, "channels_last": True},
    "compile": {"compile": True},
    "stream": {"data_loading": "stream"},
}


def _params(steps: int, **train: object) -> Params:
    params = project_params("stacked-digits", steps=steps, device="cuda", **SETTING, **train)
    data = params.data.model_copy(update={"image_size": 32})
    model = params.model.model_copy(update={"spectral_norm": False})  # the same nets for every arm, compile too
    return params.model_copy(update={"data": data, "model": model})


@contextmanager
def _utilisation(samples: list[float], period: float = 0.2) -> Iterator[None]:
    """GPU utilisation (%) from `nvidia-smi`, sampled every `period` seconds while the block runs."""
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                samples.append(float(out.stdout.split()[0]))

    thread = threading.Thread(target=sample, daemon=True)
    if shutil.which("nvidia-smi"):
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()


def _host_syncs(params: Params, x: np.ndarray, device: torch.device, steps: int) -> int:
    """Host syncs of `steps` training steps, the last of them a log step, from CUDA's sync debug mode."""
    train = params.train.model_copy(update={"steps": 1 + steps, "log_every": 1 + steps})
    state = init_state(params.model, train, tuple(x.shape[1:]), device)
    real = device_or_stream(train, x, 0, device)
    fit(state, real, train.model_copy(update={"steps": 1}), no_log)  # a first step outside: lazy set-up syncs
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fit(state, real, train, no_log)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def speedups(wall: dict[str, list[float]], baseline: str = "fp32") -> dict[str, dict[str, object]]:
    """Each arm's speed-up over `baseline` (baseline seconds / arm seconds) with a paired t-interval over the
    rounds: round i of every arm ran back to back with the baseline's round i."""
    return {name: rounded_interval(ratio_interval(wall[baseline], seconds), 3) for name, seconds in wall.items()}


def measure(quick: bool) -> dict[str, object]:
    if not torch.cuda.is_available():
        note("gpu: no CUDA device; nothing to measure")
        return {"gpu": {"available": False}}
    device = torch.device("cuda")
    steps, repeats = (50, 3) if quick else (300, 5)
    x = build_dataset(_params(steps).data).x
    note(f"gpu: {torch.cuda.get_device_name(device)}, stacked-digits {x.shape}, {steps} steps, {repeats} repeats")
    arms = {name: fit_arm(_params(steps, **train), x, device) for name, train in VARIANTS.items()}
    for arm in arms.values():
        arm()  # warm-up
    utilisation: list[float] = []
    with _utilisation(utilisation):
        seconds = interleaved(arms, repeats)
    examples = steps * SETTING["batch_size"]
    syncs = _host_syncs(_params(steps), x, device, steps=SYNC_STEPS)
    return {
        "gpu": {
            "available": True,
            "device": torch.cuda.get_device_name(device),
            "setting": {**SETTING, "dataset": "stacked-digits", "image_size": 32, "steps": steps, "repeats": repeats},
            "examples_per_s": {name: round(examples / median(s["wall"]), 1) for name, s in seconds.items()},
            "speedup_vs_fp32": speedups({name: s["wall"] for name, s in seconds.items()}),
            "utilisation_pct_mean": round(float(np.mean(utilisation)), 1) if utilisation else None,
            "host_syncs": {"steps": SYNC_STEPS, "log_steps": 1, "syncs": syncs},  # ideal: 1, the log step's
        }
    }
