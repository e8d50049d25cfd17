"""The training step's costs: the real loop (`cdgan.train.fit`, nothing logged or saved) under one setting against
a baseline setting, in interleaved rounds, each cost a paired ratio with its interval (harness.ratios).

- `cd_cost`: a step of CD-k against CD-0, and the bound 1 + k x (one energy forward+backward).
- `image_steps`: a step of the real-image presets (MNIST at 28x28, stacked MNIST) against the 8x8 digits default.
- `langevin`: the share of a step spent in the Langevin chains, for the shipped models.
- `streaming`: streamed batches (DataLoader, workers) against the data set held as one tensor.
- `gpu`: on CUDA, each GPU-path setting against plain fp32, GPU utilisation and the host syncs a step makes.

Each arm starts from fresh weights, the same for every call, and a warm-up call of every arm (allocator, autograd
set-up, cuDNN autotuning, compilation) runs outside the clock. Needs no MLflow.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
import torch
from benchmarks.harness import (
    Size,
    Timing,
    fit_arm,
    interleaved,
    median,
    no_log,
    note,
    preset_params,
    project_params,
    ratios,
    step_arm,
    timed,
    torch_globals,
    warm_up,
)
from benchmarks.stats import mean_interval, ratio_interval, rounded_interval, verdict

from cdgan import train as train_module
from cdgan.data import build_dataset, device_or_stream
from cdgan.params import Params
from cdgan.train import fit, init_state

# --- cd_cost

KS = (0, 1, 5, 10, 20)
CD_COST_SIZES = {"smoke": (2, 2, ("digits",)), "quick": (10, 7, ("digits",)), "full": (30, 9, ("digits", "grid25"))}


def _energy_fb_arm(dataset: str, calls: int, x: np.ndarray) -> Callable[[], Timing]:
    """Seconds per dE(x).sum()/dx on one batch, the network in training mode: the work one chain step
    differentiates, nothing else."""
    params = project_params(dataset, eval_every=0)
    state = init_state(params.model, params.train, tuple(x.shape[1:]), torch.device("cpu"))
    batch = torch.from_numpy(x[: params.train.batch_size]).clone()

    def chain_work() -> None:
        for _ in range(calls):
            x_in = batch.detach().requires_grad_(True)
            torch.autograd.grad(state.energy(x_in).sum(), x_in)

    return lambda: timed(chain_work) / calls


def _cd_curve(seconds: dict[str, dict[str, list[float]]], clock: str) -> dict[str, object]:
    """Step costs in CD-0 steps against the bound 1 + k x (energy fwd+bwd), from one clock's rounds."""
    cost = ratios(seconds, "k=0", (clock,))
    fb = rounded_interval(ratio_interval(seconds["energy_fb"][clock], seconds["k=0"][clock]))
    bound = {k: round(1 + k * fb["estimate"], 4) for k in KS}
    k_max, step0 = KS[-1], seconds["k=0"][clock]
    chain_steps = [(a - b) / k_max for a, b in zip(seconds[f"k={k_max}"][clock], step0, strict=True)]
    return {
        "cost": {0: 1.0} | {k: cost[f"k={k}"][clock] for k in KS[1:]},
        "bound": bound,
        # met: the whole interval at or under the bound; a chain step also draws its noise and clamps
        "within_bound": {
            k: verdict(cost[f"k={k}"][clock]["low"], cost[f"k={k}"][clock]["high"], bound[k], "at_most") for k in KS[1:]
        },
        "energy_fb_over_step0": fb,
        # per round, (step_K - step_0) / K over one energy fwd+bwd: 1.0 when a chain step costs exactly that
        "chain_step_over_energy_fb": rounded_interval(ratio_interval(chain_steps, seconds["energy_fb"][clock])),
        "step_ms": {k: round(median(seconds[f"k={k}"][clock]) * 1e3, 3) for k in KS},
        "energy_fb_ms": round(median(seconds["energy_fb"][clock]) * 1e3, 3),
    }


def cd_cost(size: Size) -> dict[str, object]:
    """A training step with k Langevin steps against k = 0, and the bound 1 + k x (one energy fwd+bwd)."""
    steps, repeats, datasets = CD_COST_SIZES[size]
    results = {}
    for dataset in datasets:
        note(f"CD-k step cost on {dataset}: k in {KS}, {steps} steps per timing, {repeats} interleaved repeats")
        params = project_params(dataset)
        x = build_dataset(params.data).x
        arms = {f"k={k}": step_arm(project_params(dataset, cd_k=k, steps=steps, eval_every=0), x) for k in KS}
        arms["energy_fb"] = _energy_fb_arm(dataset, steps, x)
        warm_up(arms)
        seconds = interleaved(arms, repeats)
        results[dataset] = {
            "dataset": dataset,
            "batch_size": params.train.batch_size,
            "steps_per_timing": steps,
            "repeats": repeats,
        } | {clock: _cd_curve(seconds, clock) for clock in ("cpu", "wall")}
    headline = results["digits"]["cpu"]  # single-threaded compute: CPU time is its time on an idle machine
    return {
        "cd_k_step_cost": headline["cost"],
        "cd_k_energy_fb_cost": headline["energy_fb_over_step0"],
        "cd_k_bound": headline["bound"],
        "cd_k_within_bound": headline["within_bound"],
        "cd_k_chain_step_over_energy_fb": headline["chain_step_over_energy_fb"],
        "cd_k_detail": results,
    }


# --- image_steps

IMAGE_PRESETS = ("digits", "mnist10k", "stacked-mnist")  # the first is the baseline
IMAGE_SIZES = {"smoke": (1, 2), "quick": (5, 5), "full": (20, 7)}


def image_steps(size: Size) -> dict[str, object]:
    """A training step of the real-image presets against the digits default's: a paired ratio of CPU time, with
    the absolute milliseconds and the threads they ran on (presets/*.yaml state training times from them)."""
    steps, repeats = IMAGE_SIZES[size]
    arms = {}
    for name in IMAGE_PRESETS:
        params = preset_params(name, steps=steps, eval_every=0)
        x = build_dataset(params.data).x[:5000]  # enough rows for the batches; building stacks is not timed
        arms[name] = step_arm(params, x)
    note(f"image step cost: {list(arms)}, {steps} steps per timing, {repeats} interleaved rounds")
    warm_up(arms)
    seconds = interleaved(arms, repeats)
    cost = ratios(seconds, IMAGE_PRESETS[0], ("cpu",))
    return {
        "image_step_ms": {name: round(median(s["wall"]) * 1e3, 1) for name, s in seconds.items()},
        "image_step_cpu_ms": {name: round(median(s["cpu"]) * 1e3, 1) for name, s in seconds.items()},
        "image_step_cost_vs_digits": {name: clocks["cpu"] for name, clocks in cost.items()},
        "image_step_threads": torch.get_num_threads(),
        "image_step_settings": {"steps_per_timing": steps, "rounds": repeats},
    }


# --- langevin

LANGEVIN_PRESETS = ("digits", "grid25")
LANGEVIN_SIZES = {"smoke": (3, 2), "quick": (20, 3), "full": (30, 4)}


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


def _langevin_share(preset: str, steps: int, repeats: int) -> dict[str, object]:
    params = preset_params(preset, steps=steps, eval_every=0)
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
    note(f"  {preset}: Langevin share of a step (CPU) {[round(s, 3) for s in shares['cpu']]}")
    return {
        "preset": preset,
        "cd_k": params.train.cd_k,
        "n_critic": params.train.n_critic,
        "real_gp": params.train.real_gp,
        "steps_per_repeat": steps,
        "share_cpu": rounded_interval(mean_interval(shares["cpu"])),
        "share_wall": rounded_interval(mean_interval(shares["wall"])),
        "per_repeat_cpu": [round(s, 4) for s in shares["cpu"]],
        "step_cpu_ms": rounded_interval(mean_interval(step_ms), 3),
    }


def langevin(size: Size) -> dict[str, object]:
    """Share of a training step spent in the Langevin chains (CD-k's negatives), for the shipped models.

    The loop runs with its chain function (`cdgan.train._refine`) wrapped in a clock; the share is the chain's time
    over the whole loop's within each repeat, in this thread's CPU time (`time.thread_time`: the loop is
    single-threaded at OMP_NUM_THREADS=1 and no other user of the machine moves it), wall time beside it; a
    t-interval over repeats."""
    steps, repeats = LANGEVIN_SIZES[size]
    out = {}
    for preset in LANGEVIN_PRESETS:
        note(f"Langevin share on {preset}: {repeats} repeats of {steps} steps")
        out[preset] = _langevin_share(preset, steps, repeats)
    return {"langevin_share": out}


# --- streaming

WORKERS = (0, 2)
STREAMING_SIZES = {"smoke": (5, 2), "quick": (40, 5), "full": (200, 9)}


def streaming(size: Size) -> dict[str, object]:
    """Streamed batches against the data set held as one tensor, same params and weights: examples/s of the stream
    over the tensor's, paired by round. The stream's workers start before the clock (paid once per run). On the
    CPU the tensor is what `train.data_loading: auto` picks: this measures the stream where it is not needed."""
    steps, repeats = STREAMING_SIZES[size]

    def stacked(**train: object) -> Params:
        return project_params("stacked-digits", steps=steps, eval_every=0, **train)

    params = stacked()
    x = build_dataset(params.data).x
    note(f"streaming on stacked-digits {x.shape}: {steps} steps per timing, {repeats} interleaved repeats")
    arms = {"tensor": fit_arm(params, x)}
    arms |= {f"workers_{w}": fit_arm(stacked(data_loading="stream", num_workers=w), x) for w in WORKERS}
    warm_up(arms)
    seconds = interleaved(arms, repeats)
    examples = steps * params.train.batch_size
    throughput = ratios(seconds, "tensor", speedup=True)
    return {
        "stream_throughput_ratio": {name: clocks["wall"] for name, clocks in throughput.items()},
        "streaming": {
            "dataset": "stacked-digits",
            "shape": list(x.shape),
            "steps": steps,
            "batch_size": params.train.batch_size,
            "repeats": repeats,
            "throughput_ratio_cpu": {name: clocks["cpu"] for name, clocks in throughput.items()},
            "examples_per_s": {name: round(examples / median(s["wall"]), 1) for name, s in seconds.items()},
            "examples_per_cpu_s": {name: round(examples / median(s["cpu"]), 1) for name, s in seconds.items()},
        },
    }


# --- gpu

GPU_SETTING = {"batch_size": 256, "cd_k": 5, "eval_every": 0, "real_gp": 0.0}  # compile does not differentiate twice
SYNC_STEPS = 20
GPU_SIZES = {"smoke": (5, 2), "quick": (50, 3), "full": (300, 5)}
# train params per arm; compile needs no spectral norm and no gradient penalty (checked by Params): none has them
VARIANTS: dict[str, dict[str, object]] = {
    "fp32": {},
    "amp": {"amp": True},
    "channels_last": {"channels_last": True},
    "amp_channels_last": {"amp": True, "channels_last": True},
    "compile": {"compile": True},
    "stream": {"data_loading": "stream"},
}


def _gpu_params(steps: int, **train: object) -> Params:
    params = project_params("stacked-digits", steps=steps, device="cuda", **GPU_SETTING, **train)
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


def gpu(size: Size) -> dict[str, object]:
    """The GPU path on CUDA: examples/s of each setting against plain fp32 in the same rounds (wall time), GPU
    utilisation while it trains, and the host syncs a step makes. Stacked-digits at 32 x 32 (the conv nets),
    batch 256, CD-5: big enough that the GPU, not kernel launches, sets the pace. Without a CUDA device it
    reports `{"gpu": {"available": false}}`."""
    if not torch.cuda.is_available():
        note("gpu: no CUDA device; nothing to measure")
        return {"gpu": {"available": False}}
    device = torch.device("cuda")
    steps, repeats = GPU_SIZES[size]
    x = build_dataset(_gpu_params(steps).data).x
    note(f"gpu: {torch.cuda.get_device_name(device)}, stacked-digits {x.shape}, {steps} steps, {repeats} repeats")
    arms = {name: fit_arm(_gpu_params(steps, **train), x, device) for name, train in VARIANTS.items()}
    warm_up(arms)
    utilisation: list[float] = []
    with _utilisation(utilisation):
        seconds = interleaved(arms, repeats)
    examples = steps * GPU_SETTING["batch_size"]
    syncs = _host_syncs(_gpu_params(steps), x, device, steps=SYNC_STEPS)
    speedups = ratios(seconds, "fp32", ("wall",), speedup=True, digits=3)
    return {
        "gpu": {
            "available": True,
            "device": torch.cuda.get_device_name(device),
            "setting": {
                **GPU_SETTING,
                "dataset": "stacked-digits",
                "image_size": 32,
                "steps": steps,
                "repeats": repeats,
            },
            "examples_per_s": {name: round(examples / median(s["wall"]), 1) for name, s in seconds.items()},
            "speedup_vs_fp32": {name: clocks["wall"] for name, clocks in speedups.items()},
            "utilisation_pct_mean": round(float(np.mean(utilisation)), 1) if utilisation else None,
            "host_syncs": {"steps": SYNC_STEPS, "log_steps": 1, "syncs": syncs},  # ideal: 1, the log step's
        }
    }
