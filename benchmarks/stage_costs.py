"""What `cdgan train` adds to a bare loop, cost by cost, each timed alone over many calls.

On a shared machine an end-to-end ratio near 0.95 is within the noise of a few repeats; per-call costs
are small, repeatable measurements. Their sum, scaled by how often the stage pays each one at the
params.yaml defaults (log_every, checkpoint_every, steps), predicts the throughput ratio and says
which cost to remove first.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import mlflow
import torch
from benchmarks.arms import no_log, project_params, torch_globals
from benchmarks.throughput import bare_fit, prepare_project, quiet_bar
from benchmarks.timing import Timing, environ, interleaved, median, note, paired_ratio, timed
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from cdgan import tracking
from cdgan.data import load_dataset
from cdgan.files import save_torch
from cdgan.params import Params
from cdgan.stages import train as train_stage
from cdgan.train import RunMeta, checkpoint_dict, fit, init_state

VALUES = {"loss_e": -0.2, "e_real": -0.4, "e_fake": -0.2, "loss_g": -0.2, "grad_norm_g": 0.5}  # what fit logs


def _per_call(fn: Callable[[], object], calls: int) -> Callable[[], Timing]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return lambda: timed(run) / calls


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
        "ema_averaged_model": _per_call(lambda: averaged.update_parameters(generator), calls),
        "ema_by_hand": _per_call(hand_ema, calls),
        "grad_norm": _per_call(grad_norm, calls),
    }


def _tracking_costs(params: Params, root: Path, x_data: torch.Tensor, calls: int, repeats: int) -> dict[str, object]:
    """CPU seconds per call of what `stages.train` does at log and checkpoint steps (a real SQLite store).

    `tracking.log_metrics` queues the values for the run's sender thread; the process CPU time counted here
    includes that thread's writes done within the timing."""
    paths = prepare_project(root / "project", params)
    state = init_state(params.model, params.train, tuple(x_data.shape[1:]), torch.device("cpu"))
    meta = RunMeta(params.model, params.train, tuple(x_data.shape[1:]))
    checkpoint = root / "checkpoint.pt"
    arms: dict[str, Callable[[], Timing]] = {}
    with ExitStack() as stack:
        stack.enter_context(environ(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"))
        stack.enter_context(tracking.tracked_run(params, paths))  # creates the store: not timed
        step = itertools.count(1)
        arms["mlflow_log_metrics"] = _per_call(lambda: tracking.log_metrics(next(step), VALUES), calls)

        # what the loop paid before metrics had their own sender thread: the write itself, in the caller
        arms["mlflow_log_metrics_in_caller"] = _per_call(lambda: mlflow.log_metrics(VALUES, step=next(step)), calls)
        arms["checkpoint_save"] = _per_call(lambda: save_torch(checkpoint, checkpoint_dict(state, meta)), 5)
        stack.enter_context(quiet_bar())
        progress = stack.enter_context(train_stage._progress_bar())  # the stage's own bar, drawing to /dev/null
        task = progress.add_task("train cd", total=params.train.steps, info="")
        info = " ".join(f"{k}={v:.3g}" for k, v in VALUES.items())
        arms["progress_update"] = _per_call(lambda: progress.update(task, completed=next(step), info=info), calls)
        seconds = interleaved(arms, repeats)
    return {name: median(values["cpu"]) for name, values in seconds.items()}


def _bar_thread_share(params: Params, repeats: int, idle: float = 2.0) -> float:
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
    with environ(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns-fixed' / 'mlflow.db'}"):
        for round_ in range(repeats + 1):
            with torch_globals(), quiet_bar():
                took = timed(lambda: train_stage.train(one, paths))
            if round_:  # the first creates the store
                seconds.append(took.wall)
    return median(seconds)


def measure(quick: bool) -> dict[str, object]:
    params = project_params("digits", eval_every=0)
    steps, repeats, calls = (15, 7, 20) if quick else (40, 11, 50)
    train = params.train
    note(f"stage costs on digits: loop steps ({steps} per timing), per-call costs ({calls} calls), {repeats} repeats")
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-costs-") as tmp:
        root = Path(tmp)
        x_data = torch.from_numpy(load_dataset(prepare_project(root / "data", params).dataset).x)
        arms = _loop_arms(params, x_data, steps) | _ema_arms(params, x_data, calls)
        for arm in arms.values():
            arm()  # warm-up
        seconds = interleaved(arms, repeats)
        loop = {name: median(values["cpu"]) for name, values in seconds.items()}
        per_call = _tracking_costs(params, root, x_data, calls, max(3, repeats // 2))
        bar_share = _bar_thread_share(params, 3)
        fixed = _fixed_cost(params, root, 3)
    bare = loop["bare_step"]
    cpu = {name: values["cpu"] for name, values in seconds.items()}
    fractions = {  # each cost as a fraction of one bare step, at the params.yaml defaults
        # EMA by AveragedModel, grad norm, dict of detached values; paired: each fit run beside a bare run
        "loop_code": paired_ratio(cpu["fit_step"], cpu["bare_step"]) - 1,
        "deterministic_algorithms": paired_ratio(cpu["fit_step_deterministic"], cpu["fit_step"]) - 1,
        "mlflow_log_metrics": per_call["mlflow_log_metrics"] / train.log_every / bare,
        "progress_update": per_call["progress_update"] / train.log_every / bare,
        "progress_refresh_thread": bar_share,
        "checkpoint_save": per_call["checkpoint_save"] / train.checkpoint_every / bare,
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
            | {name: round(value * 1e3, 4) for name, value in per_call.items()},
            "fixed_per_run_s": round(fixed, 3),
            "fraction_of_bare_step": {name: round(value, 4) for name, value in fractions.items()},
            "predicted_ratio": round(1 / (1 + sum(fractions.values())), 4),
        }
    }
