"""Metrics off the training thread: cdgan's own sender thread (`tracking.log_metrics` inside `tracked_run`)
against MLflow's asynchronous logging (`mlflow.log_metrics(..., synchronous=False)`), on a SQLite store.

    python benchmarks/logging_async.py --quick    # seconds on 2 CPU cores

Two costs per arm, each a median over interleaved repeats of CALLS log calls of the values `fit` logs:
- per call: what the training thread pays, its own CPU seconds (time.thread_time: not the sender's work,
  not time spent waiting for a core) and wall seconds;
- until stored: wall seconds from the first call until every value is in the store (cdgan's
  `wait_for_metrics`, MLflow's `flush_async_logging`), checked by reading the metric history back.
The baseline is MLflow's plain synchronous call in the training thread, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `benchmarks`

import mlflow
from benchmarks.timing import Timing, environ, interleaved, machine, median, note, paired_ratio, rounded
from mlflow.tracking import MlflowClient

from cdgan import tracking
from cdgan.params import Params, Paths

VALUES = {"loss_e": -0.2, "e_real": -0.4, "e_fake": -0.2, "loss_g": -0.2, "grad_norm_g": 0.5}  # what fit logs


def _arm(log: Callable[[int], None], wait: Callable[[], None], calls: int, steps: itertools.count,
         stored: Callable[[], int], per_call: dict[str, list[float]], name: str) -> Callable[[], Timing]:  # fmt: skip
    """One round: `calls` log calls, then the wait until they are stored. Returns (wall until stored, cpu of
    the training thread until stored); the per-call figures go to `per_call[name]`."""

    def run() -> Timing:
        before = stored()
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(calls):
            log(next(steps))
        logged_wall, logged_cpu = time.perf_counter() - wall, time.thread_time() - cpu
        wait()
        total = Timing(time.perf_counter() - wall, time.thread_time() - cpu)
        assert stored() - before == calls * len(VALUES), f"{name}: not every value reached the store"
        per_call.setdefault(f"{name}_wall", []).append(logged_wall / calls)
        per_call.setdefault(f"{name}_cpu", []).append(logged_cpu / calls)
        return total

    return run


def measure(quick: bool) -> dict[str, object]:
    calls, repeats = (50, 5) if quick else (200, 9)
    note(f"logging_async: {calls} log calls of {len(VALUES)} values per round, {repeats} rounds, SQLite store")
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-logging-") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlruns' / 'mlflow.db'}"
        with environ(MLFLOW_TRACKING_URI=uri), tracking.tracked_run(Params(), Paths(Path(tmp) / "project")) as run_id:
            client = MlflowClient(uri)
            steps = itertools.count()

            def stored() -> int:
                return sum(len(client.get_metric_history(run_id, key)) for key in VALUES)

            per_call: dict[str, list[float]] = {}
            arms = {
                "mlflow_sync": _arm(
                    lambda step: mlflow.log_metrics(VALUES, step=step),
                    lambda: None,
                    calls,
                    steps,
                    stored,
                    per_call,
                    "mlflow_sync",
                ),
                "cdgan_sender": _arm(
                    lambda step: tracking.log_metrics(step, VALUES),
                    tracking.wait_for_metrics,
                    calls,
                    steps,
                    stored,
                    per_call,
                    "cdgan_sender",
                ),
                "mlflow_async": _arm(
                    lambda step: mlflow.log_metrics(VALUES, step=step, synchronous=False),
                    mlflow.flush_async_logging,
                    calls,
                    steps,
                    stored,
                    per_call,
                    "mlflow_async",
                ),
            }
            for arm in arms.values():
                arm()  # warm-up: the sender threads start, SQLAlchemy caches its statements
            per_call.clear()
            until_stored = interleaved(arms, repeats)
    wall = {name: values["wall"] for name, values in until_stored.items()}
    call_cpu = {name: per_call[f"{name}_cpu"] for name in arms}
    return {
        "logging_async": {
            "calls_per_round": calls,
            "values_per_call": len(VALUES),
            "repeats": repeats,
            "per_call_training_thread_cpu_s": {name: median(values) for name, values in call_cpu.items()},
            "per_call_wall_s": {name: median(per_call[f"{name}_wall"]) for name in arms},
            "until_stored_wall_s": {name: median(values) for name, values in wall.items()},
            "until_stored_wall_s_rounds": {name: rounded(values, 5) for name, values in wall.items()},
            # paired per-round ratios; > 1: MLflow's asynchronous logging costs more than cdgan's sender
            "ratio_per_call_cpu_mlflow_async_to_cdgan": paired_ratio(
                call_cpu["mlflow_async"], call_cpu["cdgan_sender"]
            ),
            "ratio_until_stored_mlflow_async_to_cdgan": paired_ratio(wall["mlflow_async"], wall["cdgan_sender"]),
            "ratio_per_call_cpu_cdgan_to_sync": paired_ratio(call_cpu["cdgan_sender"], call_cpu["mlflow_sync"]),
            "ratio_until_stored_cdgan_to_sync": paired_ratio(wall["cdgan_sender"], wall["mlflow_sync"]),
        }
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 calls and 5 rounds instead of 200 and 9")
    args = parser.parse_args()
    json_out = os.fdopen(os.dup(1), "w")  # stdout carries only the JSON
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    json.dump({"machine": machine()} | measure(args.quick), json_out, indent=2)
    json_out.write("\n")
    json_out.flush()
