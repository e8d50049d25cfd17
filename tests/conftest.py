"""Shared fixtures and helpers: tiny params, a real MLflow store, a real DVC project, one tiny pipeline run,
server processes; and the test tiers, assigned from what each test uses."""

from __future__ import annotations

import os

# Tiny networks gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
# threads slow them down by up to 100x; subprocesses (dvc, cdgan) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import dis
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import CodeType
from typing import Any

import numpy as np
import pytest
import requests
import torch
from benchmarks.harness import make_project, tiny_raw  # the one tiny project of the tests and the benchmarks
from xdist.scheduler import LoadScopeScheduling

from cdgan.params import Params, Paths, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: cdgan and dvc for subprocesses
STARTUP_SECONDS = (
    180  # a cold server imports mlflow or torch, or migrates its database: minutes on a busy 2-core machine
)
STOP_SECONDS = 15  # after SIGTERM, before the process group gets SIGKILL


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """subprocess.Popen whose processes are killed when the test ends, passed or failed: a test that fails
    while its `cdgan train` runs must not leave it training through the rest of the suite."""
    procs: list[subprocess.Popen] = []

    def start(*args: Any, **kwargs: Any) -> subprocess.Popen:
        procs.append(subprocess.Popen(*args, **kwargs))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def default_sigint() -> None:
    """preexec_fn for a subprocess a test interrupts: SIGINT acts as Ctrl-C in a terminal does.

    Jobs a non-interactive shell puts in the background (`cmd &`, some CI runners) ignore SIGINT, children
    inherit that, and Python then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_checkpoint(proc: subprocess.Popen, resume_dir: Path, seconds: float = 120) -> Path:
    """Block until the training `proc` has written its first resume checkpoint into `resume_dir` and return it;
    fails the test setup when the process ends first or no checkpoint comes within `seconds`."""
    deadline = time.monotonic() + seconds
    while not any(resume_dir.glob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "test setup: training ended before its first checkpoint: raise train.steps"
    checkpoints = sorted(resume_dir.glob("*.pt"))
    assert checkpoints, f"test setup: no checkpoint within {seconds} s"
    return checkpoints[0]


def assert_same_weights(a: Path | dict[str, torch.Tensor], b: Path | dict[str, torch.Tensor], what: str = "") -> None:
    """The two state dicts (or the files holding them) hold the same keys and bitwise the same tensors."""
    sa = torch.load(a, weights_only=True) if isinstance(a, Path) else a
    sb = torch.load(b, weights_only=True) if isinstance(b, Path) else b
    assert sa.keys() == sb.keys(), f"{what}: different keys"
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{what or a}: {differ} differ"


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    cmd: list[str], health: str, log: Path, env: dict[str, str], startup_seconds: float = STARTUP_SECONDS
) -> subprocess.Popen:
    """`cmd` (with exactly the environment `env`) in its own process group, once `health` answers 200; its
    output is appended to `log`, so a server a test restarts keeps one log. Stopped again if it never answers."""
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + startup_seconds
    while True:
        if proc.poll() is not None:
            stop_group(proc)
            raise RuntimeError(f"{cmd[0]} exited ({proc.returncode}) before serving:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(health, timeout=2).ok:
                return proc
        except requests.RequestException:
            pass  # not listening yet
        if time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"{health} not healthy after {startup_seconds}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to whatever of it is left after STOP_SECONDS."""
    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(STOP_SECONDS)
    with suppress(ProcessLookupError):  # children (uvicorn, gunicorn workers) can outlive their leader
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextmanager
def serving(
    cmd: list[str], health: str, log: Path, env: dict[str, str], startup_seconds: float = STARTUP_SECONDS
) -> Iterator[subprocess.Popen]:
    """`start_server` for the block; the whole process group is stopped however the block ends."""
    proc = start_server(cmd, health, log, env, startup_seconds)
    try:
        yield proc
    finally:
        stop_group(proc)


# Test tiers. `make test-fast` runs what stays in this process; a test is marked `integration` when it runs
# under tests/pipelines/, uses a fixture that starts processes, or reaches the subprocess module through its
# own code or that of the fixtures and helpers (functions and classes of tests/) it uses. `slow` (minutes of
# training) is marked by hand. Both follow the code, so a new test needs no mark to land in the right tier.
PROCESS_FIXTURES = {"dvc_repo", "spawn", "prefect_harness", "prefect_server", "mlflow_server"}


# Modules whose tests share a costly module-scoped fixture: pytest-xdist hands each one to a single worker,
# which then builds the fixture once (its loadgroup mode would, but ignores xdist_group marks under pytest 9).
ONE_WORKER_MODULES = {"tests/test_dvc_exp.py"}


class _SharedModuleScheduling(LoadScopeScheduling):
    """xdist's loadscope with each test its own scope, but for ONE_WORKER_MODULES: one scope per module."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return module if module in ONE_WORKER_MODULES else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadScopeScheduling:
    return _SharedModuleScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable: the longest trainings first
    pipelines = REPO / "tests" / "pipelines"
    walked: dict[CodeType, bool] = {}  # helpers and fixtures shared by many tests are read once
    for item in items:
        fixtures = [defs[-1].func for defs in item._fixtureinfo.name2fixturedefs.values()]  # the ones it gets
        if (
            item.path.is_relative_to(pipelines)
            or PROCESS_FIXTURES & set(item.fixturenames)  # fixturenames: fixtures of fixtures too
            or any(_names_process(fn, walked) for fn in [getattr(item, "function", None), *fixtures])
        ):
            item.add_marker(pytest.mark.integration)


def _names_process(obj: object, walked: dict[CodeType, bool]) -> bool:
    """Whether `obj` is the subprocess module or one of its members, or a function or class of tests/ whose
    code names one, directly or through further functions and classes of tests/."""
    module = getattr(obj, "__module__", None) or ""
    if obj is subprocess or module == "subprocess":
        return True
    if not module.startswith("tests."):
        return False  # library code (cdgan, dvc, mlflow) is not read: in-process unless a fixture says otherwise
    if isinstance(obj, type):
        return any(_names_process(member, walked) for member in vars(obj).values())
    fn = getattr(obj, "__wrapped__", obj)
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    if code not in walked:
        walked[code] = False  # a cycle (recursion) adds nothing
        walked[code] = any(_names_process(fn.__globals__.get(name), walked) for name in _global_names(code))
    return walked[code]


def _global_names(code: CodeType) -> Iterator[str]:
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            yield instruction.argval
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _global_names(const)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return parse_params(tiny_raw(), "tiny params")


@pytest.fixture(scope="session")
def real_params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real SQLite MLflow store for the whole session; tests isolate by model and experiment names."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="session")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Path:
    """One tiny `dvc repro` of the whole pipeline in a fresh git + DVC project; never mutated by tests."""
    root = make_project(tmp_path_factory.mktemp("project"), tiny_raw(register={"model_name": "cdgan-dvc-test"}))
    run(["dvc", "repro"], root)
    return root


@pytest.fixture(scope="session")
def dvc_paths(dvc_repo: Path) -> Paths:
    return Paths(dvc_repo)
