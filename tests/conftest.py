"""Shared fixtures: tiny params, a real MLflow store, a real DVC project, one tiny pipeline run."""

from __future__ import annotations

import os

# Tiny networks gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
# threads slow them down by up to 100x; subprocesses (dvc, cdgan) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cdgan.params import Params, Paths, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: cdgan and dvc for subprocesses

# Tiny but real: a few steps of every stage on the embedded digits, on the CPU.
TINY = {
    "data": {"dataset": "digits", "classifier_epochs": 1},
    "train": {"steps": 20, "log_every": 5, "eval_every": 10, "checkpoint_every": 10, "device": "cpu", "cd_k": 2},
    "evaluate": {"n_samples": 200, "kid_subset_size": 100, "kid_subsets": 10},
}


def merged(base: dict, overrides: dict) -> dict:
    out = {**base}
    for key, value in overrides.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def tiny_raw(**sections: dict) -> dict:
    """The real params.yaml with the TINY overrides, then `sections` on top."""
    return merged(merged(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), sections)


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


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def make_project(root: Path, raw_params: dict) -> Path:
    """A real git + DVC project: the repo's dvc.yaml and sources, the given params, committed."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@cdgan"], root)
    run(["git", "config", "user.name", "cdgan tests"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    return root


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
