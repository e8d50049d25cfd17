"""Training throughput: `cdgan.stages.train` (MLflow, checkpoints, progress bar) against a bare PyTorch loop.

Both arms train the same networks (`build_models`) on the same prepared data with the same batch, loss,
Langevin chain and optimisers; the bare loop is written here with no tracking. A short run of both
from the same seed must give bitwise-equal weights, which shows that they do the same work.
"""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yaml
from benchmarks.timing import REPO, Timing, environ, interleaved, median, note, paired_ratio, rounded, stopwatch, timed
from rich.progress import Progress
from torch import Tensor

from cdgan import stages
from cdgan.data import load_dataset
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams, Params, Paths, TrainParams, parse_params
from cdgan.train import fit, init_state

CPU = torch.device("cpu")
# Train params the bare loop does not write; the benchmark refuses to compare when one is switched on.
_PLAIN_CD = {"loss": "cd", "replay_size": 0, "real_gp": 0.0, "langevin_grad_clip": 0.0, "generator_objective": "energy"}


def project_params(dataset: str, **train: object) -> Params:
    """The repo's params.yaml on the CPU for `dataset`, with `train` overrides (a 1-epoch FID classifier)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] = {**raw["data"], "dataset": dataset, "classifier_epochs": 1}
    raw["train"] = {**raw["train"], "device": "cpu", **train}
    return parse_params(raw, "benchmark params")


def _check_plain_cd(params: TrainParams) -> None:
    extras = {key: getattr(params, key) for key, off in _PLAIN_CD.items() if getattr(params, key, off) != off}
    if extras:
        raise ValueError(f"the bare loop writes plain CD only; params.yaml switches on {extras}")


@contextmanager
def torch_globals() -> Iterator[None]:
    """`stages.train` switches on deterministic algorithms and reseeds torch; undo both afterwards."""
    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng)


def bare_fit(model: ModelParams, train: TrainParams, x_data: Tensor, steps: int) -> tuple[Generator, EnergyNet]:
    """What a user would write by hand: CD-k with Adam and a generator EMA, nothing logged or saved."""
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


def no_log(step: int, values: dict[str, float]) -> None:
    """`fit`'s log callable when nothing is tracked."""


@contextmanager
def quiet_bar() -> Iterator[None]:
    """Where the stage's rich bar draws: /dev/null, still treated as a terminal (TTY_COMPATIBLE), so the
    live bar renders and refreshes exactly as in a terminal without flooding the benchmark's stderr."""
    with Path(os.devnull).open("w") as sink, environ(TTY_COMPATIBLE="1"), redirect_stdout(sink):
        yield


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
            for patch in (mock.patch.object(stages, "fit", timed_fit), *patches):  # timing wrapper changes nothing
                stack.enter_context(patch)
            stack.enter_context(torch_globals())
            stack.enter_context(quiet_bar())
            return timed(lambda: stages.train(params, paths))

    return arm


def _bare_arm(params: Params, x_data: Tensor) -> Callable[[], Timing]:
    def arm() -> Timing:
        with torch_globals():
            return timed(lambda: bare_fit(params.model, params.train, x_data, params.train.steps))

    return arm


def prepare_project(root: Path, params: Params) -> Paths:
    subprocess.run(["git", "init", "-q", str(root)], check=True)  # lineage tags read git, as in a real project
    paths = Paths(root)
    stages.prepare(params, paths)
    return paths


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
        "stage_no_bar": [mock.patch.object(stages, "_progress_bar", _disabled_bar)],
        "stage_bar_manual_refresh": [mock.patch.object(stages, "Progress", _ManualRefreshProgress)],
        "stage_nondeterministic": [mock.patch.object(torch, "use_deterministic_algorithms", lambda *a, **k: None)],
    }


def fit_arm(params: Params, x: np.ndarray, device: torch.device = CPU) -> Callable[[], Timing]:
    """`cdgan.train.fit` alone from fresh weights, nothing logged or saved, its data on the device or streamed
    as `stages.train` would; the clock stops when the device is done."""

    def arm() -> Timing:
        with torch_globals():
            state = init_state(params.model, params.train, tuple(x.shape[1:]), device)
            real = stages.device_or_stream(params.train, x, 0, device)

            def run() -> None:
                fit(state, real, params.train, no_log)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            return timed(run)

    return arm


def _summary(seconds: dict[str, list[float]], examples: int) -> dict[str, object]:
    return {
        "examples_per_s": round(examples / median(seconds["wall"]), 1),
        "examples_per_cpu_s": round(examples / median(seconds["cpu"]), 1),
        "wall_s": rounded(seconds["wall"]),
        "cpu_s": rounded(seconds["cpu"]),
    }


def measure_dataset(dataset: str, steps: int, repeats: int, breakdown: bool, eval_every: int = 0) -> dict[str, object]:
    """Interleaved repeats of stage and bare loop on one data set: medians, raw times and the ratios.

    With `breakdown`, `fit` alone and the stage variants of `_experiments` join the same interleaving."""
    params = project_params(dataset, steps=steps, eval_every=eval_every)
    _check_plain_cd(params.train)
    with (
        tempfile.TemporaryDirectory(prefix="cdgan-bench-") as tmp,
        environ(MLFLOW_TRACKING_URI=f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"),
    ):
        paths = prepare_project(Path(tmp) / "project", params)
        x_data = torch.from_numpy(load_dataset(paths.dataset).x)
        max_diff = bare_matches_fit(params.model, params.train, x_data, steps=10)
        note(f"{dataset}: bare loop vs fit after 10 steps, max |weight diff| = {max_diff:.3g}")
        first = params.model_copy(update={"train": params.train.model_copy(update={"steps": params.train.log_every})})
        first_run = _stage_arm(first, paths, [])()  # creates the MLflow store once, as a project's first run does
        inside: list[Timing] = []
        arms = {"stage": _stage_arm(params, paths, inside), "bare": _bare_arm(params, x_data)}
        if breakdown:
            arms["fit"] = fit_arm(params, x_data.numpy())
            arms |= {name: _stage_arm(params, paths, [], *patches) for name, patches in _experiments().items()}
            scoring = project_params(dataset, steps=steps)  # eval_every as params.yaml sets it: FID during training
            arms["stage_with_scoring"] = _stage_arm(scoring, paths, [])
        seconds = interleaved(arms, repeats)
    examples = steps * params.train.batch_size
    stage, bare = seconds["stage"], seconds["bare"]
    fit_wall, fit_cpu = median([t.wall for t in inside]), median([t.cpu for t in inside])
    result = {
        "dataset": dataset,
        "steps": steps,
        "batch_size": params.train.batch_size,
        "cd_k": params.train.cd_k,
        "log_every": params.train.log_every,
        "checkpoint_every": params.train.checkpoint_every,
        "eval_every": eval_every,
        "repeats": repeats,
        "ratio": round(median(bare["wall"]) / median(stage["wall"]), 4),
        "ratio_cpu": round(median(bare["cpu"]) / median(stage["cpu"]), 4),
        "ratio_paired": round(paired_ratio(bare["wall"], stage["wall"]), 4),
        "ratio_fit_only": round(median(bare["wall"]) / fit_wall, 4),  # the loop inside the stage, set-up excluded
        "ratio_fit_only_cpu": round(median(bare["cpu"]) / fit_cpu, 4),
        "stage_fixed_s": round(median(stage["wall"]) - fit_wall, 3),  # MLflow run, loading, final saves
        "eval_every_with_scoring": project_params(dataset).train.eval_every if breakdown else None,
        "stage": _summary(stage, examples) | {"fit_wall_s": rounded([t.wall for t in inside])},
        "bare": _summary(bare, examples),
        "first_stage_run_s": round(first_run.wall, 3),  # creates the SQLite store; not in the medians
        "bare_equals_fit_max_abs_diff": max_diff,
    }
    if breakdown:  # each variant's throughput relative to the real stage's, same interleaving
        result["breakdown"] = {
            name: _summary(seconds[name], examples)
            | {"vs_stage": round(median(stage["wall"]) / median(seconds[name]["wall"]), 4),
               "vs_stage_cpu": round(median(stage["cpu"]) / median(seconds[name]["cpu"]), 4)}
            for name in arms if name not in ("stage", "bare")
        }  # fmt: skip
    return result


def measure(quick: bool, breakdown: bool = False) -> dict[str, object]:
    steps, repeats = (200, 4) if quick else (2000, 5)
    datasets = ("digits",) if quick else ("digits", "grid25")
    results = {}
    for dataset in datasets:
        note(f"throughput on {dataset}: {steps} steps, {repeats} interleaved repeats, breakdown={breakdown}")
        results[dataset] = measure_dataset(dataset, steps, repeats, breakdown)
    headline = results["digits"]
    return {
        "train_throughput_ratio": headline["ratio"],
        "train_throughput_ratio_cpu": headline["ratio_cpu"],
        "train_throughput_ratio_paired": headline["ratio_paired"],
        "train_examples_per_s": {
            "stage": headline["stage"]["examples_per_s"],
            "bare": headline["bare"]["examples_per_s"],
        },
        "train_throughput": results,
    }
