"""Cost of CD-k: one training step with k Langevin steps against k = 0, and the bound 1 + k x (one E fwd+bwd).

Steps run through the real loop (`cdgan.train.fit`, no logging or checkpoints); the energy forward+backward
is exactly what one chain step differentiates: dE(x).sum()/dx on a batch, the network in training mode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from benchmarks.arms import no_log, project_params
from benchmarks.timing import Timing, interleaved, median, note, timed

from cdgan.data import build_dataset
from cdgan.train import fit, init_state

KS = (0, 1, 5, 10, 20)


def _step_arm(dataset: str, k: int, steps: int, x_data: torch.Tensor) -> Callable[[], Timing]:
    """Time per training step with cd_k = k (a fresh state each time, so every k sees the same weights)."""
    params = project_params(dataset, cd_k=k, steps=steps, eval_every=0)

    def arm() -> Timing:
        state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
        return timed(lambda: fit(state, x_data, params.train, no_log)) / steps

    return arm


def _energy_fb_arm(dataset: str, calls: int, x_data: torch.Tensor) -> Callable[[], Timing]:
    """Seconds per dE(x).sum()/dx on one batch: the work of one Langevin step, nothing else."""
    params = project_params(dataset, eval_every=0)
    state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
    x = x_data[: params.train.batch_size].clone()

    def chain_work() -> None:
        for _ in range(calls):
            x_in = x.detach().requires_grad_(True)
            torch.autograd.grad(state.energy(x_in).sum(), x_in)

    def arm() -> Timing:
        return timed(chain_work) / calls

    return arm


def _curve(seconds: dict[str, list[float]], fb_seconds: list[float], step0: float) -> dict[str, object]:
    fb = median(fb_seconds) / step0
    cost = {k: round(median(seconds[k]) / step0, 4) for k in KS}
    bound = {k: round(1 + k * fb, 4) for k in KS}
    slope = (cost[KS[-1]] - cost[0]) / KS[-1]  # measured cost of one chain step, in k = 0 steps
    return {
        "cost": cost,
        "bound": bound,
        "within_bound": {k: cost[k] <= bound[k] for k in KS},
        "within_bound_5pct": {k: cost[k] <= 1.05 * bound[k] for k in KS},  # 5%: the repeat-to-repeat noise here
        "energy_fb_over_step0": round(fb, 4),
        "chain_step_over_energy_fb": round(slope / fb, 4),  # 1.0: a chain step costs exactly one fwd+bwd
        "step_ms": {k: round(median(seconds[k]) * 1e3, 3) for k in KS},
        "energy_fb_ms": round(median(fb_seconds) * 1e3, 3),
    }


def measure_dataset(dataset: str, steps: int, repeats: int) -> dict[str, object]:
    """Interleaved step timings for every k and the energy fwd+bwd; curves on CPU and on wall time."""
    params = project_params(dataset)
    x_data = torch.from_numpy(build_dataset(params.data).x)
    arms = {f"k={k}": _step_arm(dataset, k, steps, x_data) for k in KS}
    arms["energy_fb"] = _energy_fb_arm(dataset, steps, x_data)
    for arm in arms.values():
        arm()  # warm-up: first calls pay allocator and autograd set-up
    seconds = interleaved(arms, repeats)
    curves = {}
    for clock in ("cpu", "wall"):
        per_k = {k: seconds[f"k={k}"][clock] for k in KS}
        curves[clock] = _curve(per_k, seconds["energy_fb"][clock], median(per_k[0]))
    return {"dataset": dataset, "batch_size": params.train.batch_size, "steps_per_timing": steps,
            "repeats": repeats} | curves  # fmt: skip


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (10, 7) if quick else (30, 9)
    datasets = ("digits",) if quick else ("digits", "grid25")
    results = {}
    for dataset in datasets:
        note(f"CD-k step cost on {dataset}: k in {KS}, {steps} steps per timing, {repeats} interleaved repeats")
        results[dataset] = measure_dataset(dataset, steps, repeats)
    headline = results["digits"]["cpu"]  # single-threaded compute: CPU time is its time on an idle machine
    return {
        "cd_k_step_cost": headline["cost"],
        "cd_k_energy_fb_cost": headline["energy_fb_over_step0"],
        "cd_k_bound": headline["bound"],
        "cd_k_within_bound": all(headline["within_bound"].values()),
        "cd_k_within_bound_5pct": all(headline["within_bound_5pct"].values()),
        "cd_k_chain_step_over_energy_fb": headline["chain_step_over_energy_fb"],
        "cd_k_detail": results,
    }
