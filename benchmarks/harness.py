"""What every benchmark shares: sizes, clocks, interleaved rounds and the paired ratios over them, the real training
loop as an arm, params of the shipped presets, and throwaway projects (git, DVC, an MLflow store, a Prefect server).

Imports nothing from tests/ and, at module level, nothing of MLflow or Prefect: the GPU benchmark runs without them.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import yaml
from benchmarks.stats import ratio_interval, rounded_interval

from cdgan.data import device_or_stream
from cdgan.params import Params, Paths, parse_params
from cdgan.presets import overlay_params, read_preset
from cdgan.train import fit, init_state

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
Size = Literal["smoke", "quick", "full"]  # smoke: does it run (seconds, figures meaningless); quick: wide intervals
Seconds = dict[str, dict[str, list[float]]]  # arm -> clock ("wall", "cpu") -> one value per round
_START = time.perf_counter()

# the shipped presets, each read on top of params.yaml (a preset holds only the keys it changes)
PRESETS = {
    "digits": REPO / "params.yaml",
    "grid25": REPO / "presets" / "grid25.yaml",
    "mnist10k": REPO / "presets" / "mnist10k.yaml",
    "stacked-mnist": REPO / "presets" / "stacked-mnist.yaml",
}
# tiny but real: a few steps of every stage on the embedded digits, on the CPU
TINY = {
    "data": {"dataset": "digits", "classifier_epochs": 1},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10, "checkpoint_every": 10, "device": "cpu", "cd_k": 2},
    "evaluate": {"n_samples": 200, "kid_subset_size": 100, "kid_subsets": 10},
}


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


def per_call(fn: Callable[[], object], calls: int) -> Callable[[], Timing]:
    """An arm timing `calls` calls of `fn`, as seconds per call."""

    def run() -> None:
        for _ in range(calls):
            fn()

    return lambda: timed(run) / calls


def record_round(arms: dict[str, Callable[[], Timing]], seconds: Seconds, index: int) -> None:
    """One round: every arm once, appended to `seconds`, in the arms' order on even rounds and reversed on odd
    ones (A B, B A, ...), so drift in the machine's load falls on every arm alike instead of on whichever always
    runs second."""
    for name in list(arms) if index % 2 == 0 else list(arms)[::-1]:
        timing = arms[name]()
        seconds.setdefault(name, {"wall": [], "cpu": []})
        seconds[name]["wall"].append(timing.wall)
        seconds[name]["cpu"].append(timing.cpu)
        note(f"  {name}: wall {timing.wall:.4g} s, cpu {timing.cpu:.4g} s")


def warm_up(arms: dict[str, Callable[[], Timing]]) -> None:
    """Call every arm once outside the clock: allocator, autograd set-up, thread pools, caches, compilation."""
    for arm in arms.values():
        arm()


def interleaved(arms: dict[str, Callable[[], Timing]], repeats: int) -> Seconds:
    """`repeats` rounds of `record_round`: wall and cpu lists per arm, in round order."""
    seconds: Seconds = {name: {"wall": [], "cpu": []} for name in arms}
    for index in range(repeats):
        record_round(arms, seconds, index)
    return seconds


def ratios(
    seconds: Seconds, baseline: str, clocks: tuple[str, ...] = ("wall", "cpu"), speedup: bool = False, digits: int = 4
) -> dict[str, dict[str, dict[str, object]]]:
    """arm -> clock -> the arm's seconds over the baseline's (`speedup`: the baseline's over the arm's), a paired
    interval over the rounds (benchmarks/stats.ratio_interval): round i of an arm ran beside the baseline's round i."""
    out = {}
    for name, arm in seconds.items():
        if name != baseline:
            pairs = {clock: (arm[clock], seconds[baseline][clock]) for clock in clocks}
            out[name] = {
                clock: rounded_interval(ratio_interval(*(pair[::-1] if speedup else pair)), digits)
                for clock, pair in pairs.items()
            }
    return out


def median(values: list[float]) -> float:
    return statistics.median(values)


def rounded(values: list[float], digits: int = 4) -> list[float]:
    return [round(v, digits) for v in values]


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


def machine() -> dict[str, object]:
    import scipy

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


def run_info(argv: list[str]) -> dict[str, object]:
    """What made a result: the commit, whether the tree had uncommitted changes, the UTC time and the command."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "is_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/run.py", *argv]),
    }


# --- the training loop as an arm


def project_params(dataset: str, **train: object) -> Params:
    """The repo's params.yaml on the CPU for `dataset`, with `train` overrides (a 1-epoch FID classifier)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] = {**raw["data"], "dataset": dataset, "classifier_epochs": 1}
    raw["train"] = {**raw["train"], "device": "cpu", **train}
    return parse_params(raw, "benchmark params")


def preset_params(preset: str, **train: object) -> Params:
    """A shipped preset (`PRESETS`) on params.yaml, on the CPU, with `train` overrides."""
    raw = read_preset(PRESETS[preset], REPO / "params.yaml")
    raw["train"] = {**raw["train"], "device": "cpu", **train}
    return parse_params(raw, f"{PRESETS[preset].name} (benchmark)")


@contextmanager
def torch_globals() -> Iterator[None]:
    """`stages.train` switches on deterministic algorithms and reseeds torch; undo both afterwards."""
    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng)


def no_log(step: int, values: dict[str, float]) -> None:
    """`fit`'s log callable when nothing is tracked."""


def fit_arm(params: Params, x: np.ndarray, device: torch.device = CPU) -> Callable[[], Timing]:
    """`cdgan.train.fit` alone from fresh weights (the same for every call), nothing logged or saved, its data on
    the device or streamed as `stages.train` would; the clock stops when the device is done."""

    def arm() -> Timing:
        with torch_globals():
            state = init_state(params.model, params.train, tuple(x.shape[1:]), device)
            real = device_or_stream(params.train, x, 0, device)

            def run() -> None:
                fit(state, real, params.train, no_log)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            return timed(run)

    return arm


def step_arm(params: Params, x: np.ndarray) -> Callable[[], Timing]:
    """`fit_arm` on the CPU as seconds per training step."""
    arm = fit_arm(params, x)
    return lambda: arm() / params.train.steps


# --- throwaway projects


def tiny_raw(**sections: dict) -> dict:
    """The real params.yaml with the `TINY` overrides, then `sections` on top."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return overlay_params(overlay_params(raw, TINY), sections)


def run_command(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with this interpreter's bin first on PATH (its `dvc`, `cdgan`); fails with its output."""
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def make_project(root: Path, raw_params: dict) -> Path:
    """A real git + DVC project: the repo's dvc.yaml and sources, the given params, committed."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "bench@cdgan"],
        ["git", "config", "user.name", "cdgan benchmarks"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project"],
    ):
        run_command(cmd, root)
    return root


def prepare_project(root: Path, params: Params) -> Paths:
    """A git directory with the prepare stage run in-process on `params` (lineage tags read git, as in a project)."""
    from cdgan.stages import prepare as prepare_stage

    subprocess.run(["git", "init", "-q", str(root)], check=True)
    paths = Paths(root)
    prepare_stage.prepare(params, paths)
    return paths


@contextmanager
def own_store(project: Path) -> Iterator[None]:
    """MLFLOW_TRACKING_URI -> the project's own SQLite store, for in-process code and every subprocess."""
    with environ(MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"):
        yield


@contextmanager
def quiet_bar() -> Iterator[None]:
    """Where the stage's rich bar draws: /dev/null, still treated as a terminal (TTY_COMPATIBLE), so the
    live bar renders and refreshes exactly as in a terminal without flooding the benchmark's stderr."""
    with Path(os.devnull).open("w") as sink, environ(TTY_COMPATIBLE="1"), redirect_stdout(sink):
        yield


@contextmanager
def prefect_server(home: Path) -> Iterator[Timing]:
    """A temporary Prefect server (prefect's test harness) with PREFECT_HOME in `home`; yields its start time."""
    # the environment reaches the harness's server subprocess; offline, so no telemetry heartbeat
    with environ(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false"):
        from prefect.settings import PREFECT_HOME, temporary_settings
        from prefect.testing.utilities import prefect_test_harness

        with ExitStack() as stack:
            stack.enter_context(temporary_settings({PREFECT_HOME: home}))  # settings are read at import
            with stopwatch() as start:
                stack.enter_context(prefect_test_harness(server_startup_timeout=120))
            yield start[0]
