"""Training throughput: `cdgan.stages.train` (MLflow, checkpoints, progress bar) against a bare PyTorch loop.

Both arms train the same networks (`build_models`) on the same prepared data with the same batch, loss,
Langevin chain and optimisers; the bare loop is written here with no tracking. A short run of both
from the same seed must give bitwise-equal weights, which shows that they do the same work.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from benchmarks.harness import (
    Seconds,
    Size,
    Timing,
    fit_arm,
    median,
    no_log,
    note,
    own_store,
    prepare_project,
    project_params,
    quiet_bar,
    record_round,
    rounded,
    stopwatch,
    timed,
    torch_globals,
)
from benchmarks.stats import bootstrap_ratio_interval, ratio_interval, rounded_interval, run_pairs, verdict
from rich.progress import Progress
from torch import Tensor

from cdgan.data import load_dataset
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams, Params, Paths, TrainParams
from cdgan.stages import train as train_stage
from cdgan.train import fit, init_state

# Train params the bare loop does not write; the benchmark refuses to compare when one is switched on.
_PLAIN_CD = {"loss": "cd", "replay_size": 0, "langevin_grad_clip": 0.0, "generator_objective": "energy"}


def _check_plain_cd(params: TrainParams) -> None:
    extras = {key: getattr(params, key) for key, off in _PLAIN_CD.items() if getattr(params, key, off) != off}
    if extras:
        raise ValueError(f"the bare loop writes plain CD only; params.yaml switches on {extras}")


def bare_fit(model: ModelParams, train: TrainParams, x_data: Tensor, steps: int) -> tuple[Generator, EnergyNet]:
    """What a user would write by hand: CD-k with R1 on real data, Adam and a generator EMA, nothing logged or
    saved."""
    torch.manual_seed(train.seed)
    generator, energy = build_models(model, tuple(x_data.shape[1:]))
    ema = copy.deepcopy(generator) if train.ema > 0 else None
    betas = (train.beta1, train.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=train.lr, betas=betas)
    opt_e = torch.optim.Adam(energy.parameters(), lr=train.lr_e or train.lr, betas=betas)
    rng = torch.Generator().manual_seed(train.seed)
    batch, is_image = train.batch_size, x_data.dim() == 4
    generator.train()
    for step in range(steps):
        for _ in range(train.n_critic):
            x_real = x_data[torch.randint(len(x_data), (batch,), generator=rng)]
            with torch.no_grad():
                x = generator(torch.randn(batch, model.z_dim, generator=rng))
            for _ in range(train.cd_k):  # Langevin: x <- x - eta dE/dx + sigma eps
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(energy(x).sum(), x)
                x = x.detach() - train.langevin_step_size * grad
                if train.langevin_noise > 0:
                    x = x + train.langevin_noise * torch.randn(x.shape, generator=rng)
                if is_image:
                    x = x.clamp(-1.0, 1.0)
            e_real, e_fake = energy(x_real), energy(x.detach())
            loss_e = e_real.mean() - e_fake.mean()
            loss_e = loss_e + train.energy_reg * (e_real.square().mean() + e_fake.square().mean())
            if train.real_gp:  # R1: mean |dE/dx|^2 on the real batch
                x_r = x_real.detach().requires_grad_(True)
                (grad_r,) = torch.autograd.grad(energy(x_r).sum(), x_r, create_graph=True)
                loss_e = loss_e + train.real_gp * grad_r.flatten(1).square().sum(1).mean()
            opt_e.zero_grad(set_to_none=True)
            loss_e.backward()
            opt_e.step()
        loss_g = energy(generator(torch.randn(batch, model.z_dim, generator=rng))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if ema is not None:
            with torch.no_grad():
                for p_ema, p in zip(
                    itertools.chain(ema.parameters(), ema.buffers()),
                    itertools.chain(generator.parameters(), generator.buffers()),
                    strict=True,
                ):
                    if step == 0 or not p.is_floating_point():
                        p_ema.copy_(p)
                    else:
                        p_ema.lerp_(p, 1 - train.ema)
    return generator, energy


def bare_matches_fit(model: ModelParams, train: TrainParams, x_data: Tensor, steps: int) -> float:
    """Largest |weight difference| after `steps` of the bare loop and of `cdgan.train.fit` from one seed."""
    short = train.model_copy(update={"steps": steps})
    with torch_globals():
        generator, energy = bare_fit(model, short, x_data, steps)
        state = fit(init_state(model, short, tuple(x_data.shape[1:]), torch.device("cpu")), x_data, short, no_log)
    pairs = zip(
        itertools.chain(generator.state_dict().values(), energy.state_dict().values()),
        itertools.chain(state.generator.state_dict().values(), state.energy.state_dict().values()),
        strict=True,
    )
    return max((a.double() - b.double()).abs().max().item() for a, b in pairs)


def _stage_arm(params: Params, paths: Paths, fit_times: list[Timing], *patches: Any) -> Callable[[], Timing]:
    """One `cdgan train` in-process: Timing of the whole stage; the Timing inside `fit` is kept aside.

    `patches` (unittest.mock patchers) change the stage for an experiment; none for the real thing."""

    def timed_fit(*args: Any, **kwargs: Any) -> Any:
        with stopwatch() as inside:
            result = fit(*args, **kwargs)
        fit_times.append(inside[0])
        return result

    def arm() -> Timing:
        with ExitStack() as stack:
            for patch in (mock.patch.object(train_stage, "fit", timed_fit), *patches):  # timing wrapper changes nothing
                stack.enter_context(patch)
            stack.enter_context(torch_globals())
            stack.enter_context(quiet_bar())
            return timed(lambda: train_stage.train(params, paths))

    return arm


def _bare_arm(params: Params, x_data: Tensor) -> Callable[[], Timing]:
    def arm() -> Timing:
        with torch_globals():
            return timed(lambda: bare_fit(params.model, params.train, x_data, params.train.steps))

    return arm


@contextmanager
def _disabled_bar() -> Iterator[Progress]:
    with Progress(disable=True) as bar:
        yield bar


class _ManualRefreshProgress(Progress):
    """The proposed bar: no refresh thread; it redraws when the loop logs (update(..., refresh=True))."""

    def __init__(self, *columns: Any, **kwargs: Any) -> None:
        super().__init__(*columns, **(kwargs | {"auto_refresh": False}))

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **(kwargs | {"refresh": True}))


def _experiments() -> dict[str, list[Any]]:
    """Stage variants that each take one cost away, to say where the time goes (never the headline)."""
    return {
        "stage_no_bar": [mock.patch.object(train_stage, "_progress_bar", _disabled_bar)],
        "stage_bar_manual_refresh": [mock.patch.object(train_stage, "Progress", _ManualRefreshProgress)],
        "stage_nondeterministic": [mock.patch.object(torch, "use_deterministic_algorithms", lambda *a, **k: None)],
    }


def _summary(seconds: dict[str, list[float]], examples: int) -> dict[str, object]:
    return {
        "examples_per_s": round(examples / median(seconds["wall"]), 1),
        "examples_per_cpu_s": round(examples / median(seconds["cpu"]), 1),
        "wall_s": rounded(seconds["wall"]),
        "cpu_s": rounded(seconds["cpu"]),
    }


def default_run_seconds(stage: list[float], fit: list[float], steps: int, run_steps: int) -> list[float]:
    """Per arm, the stage's seconds for `steps` steps of a `run_steps`-step run: its loop (`fit`) plus its
    once-per-run costs (stage - fit: MLflow run, loading, final saves) spread over `run_steps` steps."""
    return [f + (s - f) * steps / run_steps for s, f in zip(stage, fit, strict=True)]


GOAL = 0.95  # stage examples/s over the bare loop's, at least
BOUND = 0.02  # half-width of the ratio's 95 % interval that --full runs pairs for
# pairs until the CPU ratio's half-width is within `bound`, or a cap; --quick and --smoke say so in the output
STOPPING = {
    "smoke": {"bound": 0.10, "min_pairs": 2, "max_pairs": 2, "max_seconds": 60.0},
    "quick": {"bound": 0.05, "min_pairs": 4, "max_pairs": 6, "max_seconds": 120.0},
    "full": {"bound": BOUND, "min_pairs": 8, "max_pairs": 160, "max_seconds": 1200.0},
}
STEPS = {"smoke": 10, "quick": 100, "full": 100}  # short arms: the load changes over tens of seconds
VERDICT_CLOCK = "cpu"  # chosen before measuring: CPU time does not count waiting for a core, so other users of
# the shared machine move it far less than wall time; the stage's extra threads (MLflow sender, bar) still count


def measure_dataset(
    dataset: str, steps: int, stopping: dict[str, float], breakdown: bool, eval_every: int = 0, check_steps: int = 10
) -> dict[str, object]:
    """Stage and bare loop on one data set in pairs (A B, then B A), added until the interval on the CPU ratio is
    within `stopping["bound"]` or a cap is hit (benchmarks/stats.run_pairs); the ratios with their intervals.
    First, `check_steps` of each from one seed must give the same weights.

    With `breakdown`, `fit` alone and the stage variants of `_experiments` join every pair."""
    params = project_params(dataset, steps=steps, eval_every=eval_every)
    run_steps = project_params(dataset).train.steps
    _check_plain_cd(params.train)
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-") as tmp, own_store(Path(tmp)):
        paths = prepare_project(Path(tmp) / "project", params)
        x_data = torch.from_numpy(load_dataset(paths.dataset).x)
        max_diff = bare_matches_fit(params.model, params.train, x_data, steps=check_steps)
        note(f"{dataset}: bare loop vs fit after {check_steps} steps, max |weight diff| = {max_diff:.3g}")
        first = params.model_copy(update={"train": params.train.model_copy(update={"steps": params.train.log_every})})
        first_run = _stage_arm(first, paths, [])()  # creates the MLflow store once, as a project's first run does
        inside: list[Timing] = []
        arms = {"stage": _stage_arm(params, paths, inside), "bare": _bare_arm(params, x_data)}
        if breakdown:
            arms["fit"] = fit_arm(params, x_data.numpy())
            arms |= {name: _stage_arm(params, paths, [], *patches) for name, patches in _experiments().items()}
            scoring = project_params(dataset, steps=steps)  # eval_every as params.yaml sets it: FID during training
            arms["stage_with_scoring"] = _stage_arm(scoring, paths, [])
        seconds: Seconds = {}

        def in_default_run(clock: str) -> list[float]:
            fit = [getattr(t, clock) for t in inside]
            return default_run_seconds(seconds["stage"][clock], fit, steps, run_steps)

        def half_width() -> float:
            return ratio_interval(seconds["bare"][VERDICT_CLOCK], in_default_run(VERDICT_CLOCK))["half_width"]

        stopped = run_pairs(lambda index: record_round(arms, seconds, index), half_width, **stopping)
    examples = steps * params.train.batch_size
    stage, bare = seconds["stage"], seconds["bare"]
    fit_wall, fit_cpu = [t.wall for t in inside], [t.cpu for t in inside]
    ratio = {clock: ratio_interval(bare[clock], in_default_run(clock)) for clock in ("wall", "cpu")}
    result = {
        "dataset": dataset,
        "steps": steps,
        "batch_size": params.train.batch_size,
        "cd_k": params.train.cd_k,
        "log_every": params.train.log_every,
        "checkpoint_every": params.train.checkpoint_every,
        "eval_every": eval_every,
        "pairs": len(stage["wall"]),
        "stopping": rounded_interval(stopped),
        "ratio": {clock: rounded_interval(interval) for clock, interval in ratio.items()},
        "verdict": {clock: verdict(i["low"], i["high"], GOAL, "at_least") for clock, i in ratio.items()},
        "ratio_of": f"bare / stage, the stage's once-per-run costs spread over a {run_steps}-step run (params.yaml)",
        "ratio_bootstrap_cpu": [round(v, 4) for v in bootstrap_ratio_interval(bare["cpu"], in_default_run("cpu"))],
        "ratio_whole_stage_at_steps": {  # once-per-run costs spread over this benchmark's short runs only
            "wall": rounded_interval(ratio_interval(bare["wall"], stage["wall"])),
            "cpu": rounded_interval(ratio_interval(bare["cpu"], stage["cpu"])),
        },
        "ratio_fit_only": {  # the loop inside the stage (its threads, logging, bar included), set-up excluded
            "wall": rounded_interval(ratio_interval(bare["wall"], fit_wall)),
            "cpu": rounded_interval(ratio_interval(bare["cpu"], fit_cpu)),
        },
        "stage_fixed_s": round(median(stage["wall"]) - median(fit_wall), 3),  # MLflow run, loading, final saves
        "stage_fixed_cpu_s": round(median(stage["cpu"]) - median(fit_cpu), 3),
        "eval_every_with_scoring": project_params(dataset).train.eval_every if breakdown else None,
        "stage": _summary(stage, examples) | {"fit_wall_s": rounded(fit_wall), "fit_cpu_s": rounded(fit_cpu)},
        "bare": _summary(bare, examples),
        "first_stage_run_s": round(first_run.wall, 3),  # creates the SQLite store; not in the pairs
        "bare_equals_fit_max_abs_diff": max_diff,
    }
    if breakdown:  # each variant's throughput relative to the real stage's, same pairs
        result["breakdown"] = {
            name: _summary(seconds[name], examples)
            | {"vs_stage": rounded_interval(ratio_interval(stage["wall"], seconds[name]["wall"])),
               "vs_stage_cpu": rounded_interval(ratio_interval(stage["cpu"], seconds[name]["cpu"]))}
            for name in arms if name not in ("stage", "bare")
        }  # fmt: skip
    return result


def throughput(size: Size, breakdown: bool = False) -> dict[str, object]:
    """`cdgan train` (MLflow, checkpoints, progress bar) against a bare PyTorch loop on digits, params.yaml's model
    and loop with scoring off; examples/s of the stage over the bare loop's, its once-per-run costs spread over a
    params.yaml-long run. With `breakdown`, also the stage variants that each take one cost away."""
    steps, stopping = STEPS[size], STOPPING[size]
    note(f"throughput on digits: {steps} steps an arm, pairs until half-width <= {stopping['bound']} ({stopping})")
    headline = measure_dataset("digits", steps, stopping, breakdown, check_steps=min(10, steps))
    clock = VERDICT_CLOCK
    return {
        "train_throughput_ratio": headline["ratio"][clock] | {"clock": clock, "goal": f">= {GOAL}"},
        "train_throughput_verdict": headline["verdict"][clock],
        "train_throughput_ratio_wall": headline["ratio"]["wall"],
        "train_throughput_verdict_wall": headline["verdict"]["wall"],
        "train_throughput_stopping": headline["stopping"]
        | ({"note": f"{size}: bound {stopping['bound']} (full: {BOUND})"} if size != "full" else {}),
        "train_examples_per_s": {
            "stage": headline["stage"]["examples_per_s"],
            "bare": headline["bare"]["examples_per_s"],
        },
        "train_throughput": {"digits": headline},
    }
