"""What `cdgan train` adds to a bare loop, cost by cost, and what its metric logging costs the training thread.

- `stage_costs`: each cost timed alone over many calls (loop code, deterministic algorithms, EMA, gradient norm,
  a queued log call, a checkpoint, the progress bar, the once-per-run set-up), as a fraction of one bare step.
  An end-to-end ratio near 0.95 is within the noise of a few repeats; per-call costs are small, repeatable
  measurements, and their sum, scaled by how often the stage pays each one at the params.yaml defaults, predicts
  the throughput ratio (benchmarks/throughput.py) and says which cost to remove first.
- `logging_async`: cdgan's own sender thread (`tracking.log_metrics` inside `tracked_run`) against MLflow's
  asynchronous logging (`mlflow.log_metrics(..., synchronous=False)`), both against MLflow's plain synchronous
  call, on a SQLite store.
"""

from __future__ import annotations

import copy
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import mlflow
import torch
from benchmarks.harness import (
    Size,
    Timing,
    interleaved,
    median,
    no_log,
    note,
    own_store,
    per_call,
    prepare_project,
    project_params,
    quiet_bar,
    ratios,
    rounded,
    timed,
    torch_globals,
    warm_up,
)
from benchmarks.stats import ratio_interval, rounded_interval, shifted
from benchmarks.throughput import bare_fit
from mlflow.tracking import MlflowClient
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cdgan import tracking
from cdgan.data import load_dataset
from cdgan.files import save_torch
from cdgan.params import Params, Paths
from cdgan.stages import train as train_stage
from cdgan.train import RunMeta, checkpoint_dict, fit, init_state

VALUES = {"loss_e": -0.2, "e_real": -0.4, "e_fake": -0.2, "loss_g": -0.2, "grad_norm_g": 0.5}  # what fit logs

# --- stage_costs

STAGE_COSTS_SIZES = {"smoke": (2, 2, 2, 0.2), "quick": (15, 7, 20, 2.0), "full": (40, 11, 50, 2.0)}
# (loop steps per timing, repeats, calls per per-call timing, seconds the bar's thread is watched idle)


def _loop_arms(params: Params, x_data: torch.Tensor, steps: int) -> dict[str, Callable[[], Timing]]:
    """Seconds per step: the bare loop, `fit` with nothing logged, and `fit` under deterministic algorithms
    (which `stages.train` switches on for CPU runs)."""
    short = params.train.model_copy(update={"steps": steps})
    shape = tuple(x_data.shape[1:])

    def fit_arm(deterministic: bool) -> Callable[[], Timing]:
        def arm() -> Timing:
            with torch_globals():
                torch.use_deterministic_algorithms(deterministic)
                state = init_state(params.model, short, shape, torch.device("cpu"))
                return timed(lambda: fit(state, x_data, short, no_log)) / steps

        return arm

    def bare_arm() -> Timing:
        with torch_globals():
            return timed(lambda: bare_fit(params.model, short, x_data, steps)) / steps

    return {"bare_step": bare_arm, "fit_step": fit_arm(False), "fit_step_deterministic": fit_arm(True)}


def _ema_arms(params: Params, x_data: torch.Tensor, calls: int) -> dict[str, Callable[[], Timing]]:
    state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
    generator = state.generator
    averaged = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(params.train.ema), use_buffers=True)
    averaged.update_parameters(generator)  # the first call copies; later ones average
    hand = copy.deepcopy(generator)
    pairs = list(
        zip(
            itertools.chain(hand.parameters(), hand.buffers()),
            itertools.chain(generator.parameters(), generator.buffers()),
            strict=True,
        )
    )

    @torch.no_grad()
    def hand_ema() -> None:
        for p_ema, p in pairs:
            if p.is_floating_point():
                p_ema.lerp_(p, 1 - params.train.ema)
            else:
                p_ema.copy_(p)

    generator(generator.sample_z(params.train.batch_size)).square().mean().backward()  # gradients to measure

    def grad_norm() -> None:
        nn.utils.clip_grad_norm_(generator.parameters(), float("inf"))

    return {
        "ema_averaged_model": per_call(lambda: averaged.update_parameters(generator), calls),
        "ema_by_hand": per_call(hand_ema, calls),
        "grad_norm": per_call(grad_norm, calls),
    }


def _tracking_costs(params: Params, root: Path, x_data: torch.Tensor, calls: int, repeats: int) -> dict[str, float]:
    """CPU seconds per call of what `stages.train` does at log and checkpoint steps (a real SQLite store).

    `tracking.log_metrics` queues the values for the run's sender thread; the process CPU time counted here
    includes that thread's writes done within the timing."""
    paths = prepare_project(root / "project", params)
    state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
    meta = RunMeta(params.model, params.train, tuple(x_data.shape[1:]))
    checkpoint = root / "checkpoint.pt"
    arms: dict[str, Callable[[], Timing]] = {}
    with ExitStack() as stack:
        stack.enter_context(own_store(root))
        stack.enter_context(tracking.tracked_run(params, paths))  # creates the store: not timed
        step = itertools.count(1)
        arms["mlflow_log_metrics"] = per_call(lambda: tracking.log_metrics(next(step), VALUES), calls)
        # what the loop would pay without the sender thread: the write itself, in the caller
        arms["mlflow_log_metrics_in_caller"] = per_call(lambda: mlflow.log_metrics(VALUES, step=next(step)), calls)
        arms["checkpoint_save"] = per_call(lambda: save_torch(checkpoint, checkpoint_dict(state, meta)), 5)
        stack.enter_context(quiet_bar())
        progress = stack.enter_context(train_stage._progress_bar())  # the stage's own bar, drawing to /dev/null
        task = progress.add_task("train cd", total=params.train.steps, info="")
        info = " ".join(f"{k}={v:.3g}" for k, v in VALUES.items())
        arms["progress_update"] = per_call(lambda: progress.update(task, completed=next(step), info=info), calls)
        seconds = interleaved(arms, repeats)
    return {name: median(values["cpu"]) for name, values in seconds.items()}


def _bar_thread_share(params: Params, repeats: int, idle: float) -> float:
    """Share of a core the live bar's refresh thread takes: process CPU while the main thread sleeps with
    the stage's bar open, less the same without it."""

    def sleep_arm(has_bar: bool) -> Callable[[], Timing]:
        def arm() -> Timing:
            with ExitStack() as stack:
                if has_bar:
                    stack.enter_context(quiet_bar())
                    progress = stack.enter_context(train_stage._progress_bar())
                    task = progress.add_task("train cd", total=params.train.steps, info="")
                    progress.update(task, completed=params.train.log_every, info=" ".join(f"{k}=0.5" for k in VALUES))
                start = time.process_time()
                time.sleep(idle)
                return Timing(idle, time.process_time() - start)

        return arm

    seconds = interleaved({"with_bar": sleep_arm(True), "without_bar": sleep_arm(False)}, repeats)
    return max(0.0, (median(seconds["with_bar"]["cpu"]) - median(seconds["without_bar"]["cpu"])) / idle)


def _fixed_cost(params: Params, root: Path, repeats: int) -> float:
    """Wall seconds of a whole `stages.train` with one step, less one step: run set-up, loading, final saves."""
    one = params.model_copy(update={"train": params.train.model_copy(update={"steps": 1, "eval_every": 0})})
    paths = prepare_project(root / "fixed", one)
    seconds = []
    with own_store(root / "fixed"):
        for round_ in range(repeats + 1):
            with torch_globals(), quiet_bar():
                took = timed(lambda: train_stage.train(one, paths))
            if round_:  # the first creates the store
                seconds.append(took.wall)
    return median(seconds)


def stage_costs(size: Size) -> dict[str, object]:
    """What `cdgan train` adds to a bare loop, cost by cost, each as a fraction of one bare-loop step at the
    params.yaml defaults (CPU seconds; fixed_per_run: wall); the two loop costs are paired ratios to the step
    they change, with their intervals."""
    params = project_params("digits", eval_every=0)
    steps, repeats, calls, idle = STAGE_COSTS_SIZES[size]
    train = params.train
    note(f"stage costs on digits: loop steps ({steps} per timing), per-call costs ({calls} calls), {repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-costs-") as tmp:
        root = Path(tmp)
        x_data = torch.from_numpy(load_dataset(prepare_project(root / "data", params).dataset).x)
        arms = _loop_arms(params, x_data, steps) | _ema_arms(params, x_data, calls)
        warm_up(arms)
        seconds = interleaved(arms, repeats)
        loop = {name: median(values["cpu"]) for name, values in seconds.items()}
        tracked = _tracking_costs(params, root, x_data, calls, max(2, repeats // 2))
        bar_share = _bar_thread_share(params, min(3, repeats), idle)
        fixed = _fixed_cost(params, root, min(3, repeats))
    bare = loop["bare_step"]
    cpu = {name: values["cpu"] for name, values in seconds.items()}
    # paired: each fit run beside a bare run (EMA by AveragedModel, grad norm, dict of detached values)
    loop_code = shifted(ratio_interval(cpu["fit_step"], cpu["bare_step"]), -1)
    deterministic = shifted(ratio_interval(cpu["fit_step_deterministic"], cpu["fit_step"]), -1)
    fractions = {  # each cost as a fraction of one bare step, at the params.yaml defaults
        "loop_code": loop_code["estimate"],
        "deterministic_algorithms": deterministic["estimate"],
        "mlflow_log_metrics": tracked["mlflow_log_metrics"] / train.log_every / bare,
        "progress_update": tracked["progress_update"] / train.log_every / bare,
        "progress_refresh_thread": bar_share,
        "checkpoint_save": tracked["checkpoint_save"] / train.checkpoint_every / bare,
        "fixed_per_run": fixed / (train.steps * bare),
    }
    return {
        "stage_costs": {
            "basis": "CPU seconds (fixed_per_run: wall), medians; fractions of one bare-loop step",
            "defaults": {
                "log_every": train.log_every,
                "checkpoint_every": train.checkpoint_every,
                "steps": train.steps,
            },
            "bare_step_ms": round(bare * 1e3, 3),
            "fit_step_ms": round(loop["fit_step"] * 1e3, 3),
            "fit_step_deterministic_ms": round(loop["fit_step_deterministic"] * 1e3, 3),
            "per_call_ms": {
                name: round(loop[name] * 1e3, 4) for name in ("ema_averaged_model", "ema_by_hand", "grad_norm")
            }
            | {name: round(value * 1e3, 4) for name, value in tracked.items()},
            "fixed_per_run_s": round(fixed, 3),
            "loop_code": rounded_interval(loop_code),
            "deterministic_algorithms": rounded_interval(deterministic),
            "fraction_of_bare_step": {name: round(value, 4) for name, value in fractions.items()},
            "predicted_ratio": round(1 / (1 + sum(fractions.values())), 4),
        }
    }


# --- logging_async

LOGGING_SIZES = {"smoke": (5, 2), "quick": (50, 5), "full": (200, 9)}  # (log calls per round, rounds)


def _logging_arm(
    log: Callable[[int], None],
    wait: Callable[[], None],
    calls: int,
    steps: itertools.count,
    stored: Callable[[], int],
    per_call_s: dict[str, list[float]],
    name: str,
) -> Callable[[], Timing]:
    """One round: `calls` log calls, then the wait until they are stored. Returns (wall until stored, cpu of
    the training thread until stored); the per-call figures go to `per_call_s`."""

    def run() -> Timing:
        before = stored()
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            log(next(steps))
        logged_wall, logged_cpu = time.perf_counter() - wall, time.thread_time() - cpu
        wait()
        total = Timing(time.perf_counter() - wall, time.thread_time() - cpu)
        if stored() - before != calls * len(VALUES):
            raise RuntimeError(f"{name}: not every value reached the store")
        per_call_s.setdefault(f"{name}_wall", []).append(logged_wall / calls)
        per_call_s.setdefault(f"{name}_cpu", []).append(logged_cpu / calls)
        return total

    return run


def logging_async(size: Size) -> dict[str, object]:
    """Metrics off the training thread, per arm and round: per call, the training thread's own CPU seconds
    (time.thread_time: not the sender's work, not time spent waiting for a core) and wall seconds; until stored,
    wall seconds from the first call until every value is in the store (cdgan's `wait_for_metrics`, MLflow's
    `flush_async_logging`), checked by reading the metric history back. Ratios pair each round's arms."""
    calls, repeats = LOGGING_SIZES[size]
    note(f"logging_async: {calls} log calls of {len(VALUES)} values per round, {repeats} rounds, SQLite store")
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-logging-") as tmp:
        root = Path(tmp)
        with own_store(root), tracking.tracked_run(Params(), Paths(root / "project")) as run_id:
            client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
            steps = itertools.count()

            def stored() -> int:
                return sum(len(client.get_metric_history(run_id, key)) for key in VALUES)

            per_call_s: dict[str, list[float]] = {}
            calls_and_waits = {
                "mlflow_sync": (lambda step: mlflow.log_metrics(VALUES, step=step), lambda: None),
                "cdgan_sender": (lambda step: tracking.log_metrics(step, VALUES), tracking.wait_for_metrics),
                "mlflow_async": (
                    lambda step: mlflow.log_metrics(VALUES, step=step, synchronous=False),
                    mlflow.flush_async_logging,
                ),
            }
            arms = {
                name: _logging_arm(log, wait, calls, steps, stored, per_call_s, name)
                for name, (log, wait) in calls_and_waits.items()
            }
            warm_up(arms)  # the sender threads start, SQLAlchemy caches its statements
            per_call_s.clear()
            until_stored = interleaved(arms, repeats)
    call_seconds = {name: {"cpu": per_call_s[f"{name}_cpu"], "wall": per_call_s[f"{name}_wall"]} for name in arms}
    wall = {name: values["wall"] for name, values in until_stored.items()}
    per_call_vs_cdgan = ratios(call_seconds, "cdgan_sender", ("cpu",))
    stored_vs_cdgan = ratios(until_stored, "cdgan_sender", ("wall",))
    return {
        "logging_async": {
            "calls_per_round": calls,
            "values_per_call": len(VALUES),
            "repeats": repeats,
            "per_call_training_thread_cpu_s": {name: median(s["cpu"]) for name, s in call_seconds.items()},
            "per_call_wall_s": {name: median(s["wall"]) for name, s in call_seconds.items()},
            "until_stored_wall_s": {name: median(values) for name, values in wall.items()},
            "until_stored_wall_s_rounds": {name: rounded(values, 5) for name, values in wall.items()},
            # > 1: MLflow's asynchronous logging costs more than cdgan's sender; < 1 against sync: cdgan costs less
            "ratio_per_call_cpu_mlflow_async_to_cdgan": per_call_vs_cdgan["mlflow_async"]["cpu"],
            "ratio_until_stored_mlflow_async_to_cdgan": stored_vs_cdgan["mlflow_async"]["wall"],
            "ratio_per_call_cpu_cdgan_to_sync": ratios(call_seconds, "mlflow_sync", ("cpu",))["cdgan_sender"]["cpu"],
            "ratio_until_stored_cdgan_to_sync": ratios(until_stored, "mlflow_sync", ("wall",))["cdgan_sender"]["wall"],
        }
    }


# --- stage start-up: import_cost

IMPORT_COST_SIZES = {"smoke": 2, "quick": 6, "full": 12}  # rounds of the import arms
FID_ONLY_STAGES = ("prepare", "train")  # stages that take FID statistics and never score KID


def import_cost(size: Size) -> dict[str, object]:
    """Seconds a fresh process takes to import a stage module, as shipped and with torchmetrics imported too (what
    cdgan.metrics' hand-written running sums spare every stage that takes FID statistics), paired by round."""
    repeats = IMPORT_COST_SIZES[size]

    def importing(modules: str) -> Callable[[], Timing]:
        return lambda: timed(lambda: subprocess.run([sys.executable, "-c", f"import {modules}"], check=True))

    arms = {}
    for stage in FID_ONLY_STAGES:
        arms[stage] = importing(f"cdgan.stages.{stage}")
        arms[f"{stage}+torchmetrics"] = importing(f"torchmetrics, cdgan.stages.{stage}")
    note(f"import cost of {', '.join(FID_ONLY_STAGES)}: {repeats} interleaved rounds of fresh interpreters")
    warm_up(arms)  # the page cache holds every file afterwards, as on a machine that ran a stage before
    seconds = interleaved(arms, repeats)
    return {
        "import_cost": {
            stage: {
                "wall_s": round(median(seconds[stage]["wall"]), 3),
                "wall_s_with_torchmetrics": round(median(seconds[f"{stage}+torchmetrics"]["wall"]), 3),
                "ratio_with_torchmetrics": rounded_interval(
                    ratio_interval(seconds[f"{stage}+torchmetrics"]["wall"], seconds[stage]["wall"])
                ),
            }
            for stage in FID_ONLY_STAGES
        }
    }
