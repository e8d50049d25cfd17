"""Prefect fixtures: the in-process test harness, and real `prefect server` and `mlflow server` processes
on free loopback ports for the tests that drive deployments through a worker; a local Dask cluster."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from distributed import Client
from prefect.settings import PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from tests.conftest import BIN, free_port, serving, stop_group

# what tests/pipelines/ import from here
__all__ = ["Server", "client_env", "dask_cluster", "free_port", "serving", "stop_group"]


@dataclass(frozen=True)
class Server:
    """A server process on 127.0.0.1: its URL and the environment that points a client process at it."""

    url: str
    env: dict[str, str]
    log: Path


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One real temporary Prefect server (SQLite) for the session, with PREFECT_HOME in a temporary directory."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))  # for subprocesses, such as the harness's server
        # prefect reads its settings once at import, so the running process needs them set too
        with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(server_startup_timeout=120):
            yield


def client_env(*servers: Server, **extra: str) -> dict[str, str]:
    """This process's environment, the venv's bin first on PATH, pointed at `servers`."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for server in servers:
        env |= server.env
    return env | extra


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `prefect server start` (SQLite under its own temporary PREFECT_HOME) on a free port.

    Its environment goes to the subprocesses that use it (prefect CLI, worker, flow runs); this process's
    settings are left alone, so it runs beside `prefect_harness`.
    """
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = Server(api, {"PREFECT_API_URL": api, "PREFECT_HOME": str(home)}, home / "server.log")
    env = client_env(server, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    with serving(cmd, f"{api}/health", server.log, env):
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `mlflow server` on a free port: SQLite backend, artifacts proxied into a temporary folder."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = Server(uri, {"MLFLOW_TRACKING_URI": uri}, root / "server.log")
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with serving(cmd, f"{uri}/health", server.log, client_env()):
        yield server


@contextmanager
def dask_cluster(root: Path, n_workers: int, **env: str) -> Iterator[str]:
    """The address of a `dask scheduler` on a free loopback port with `n_workers` `dask worker` processes of one
    thread each, for the block; their logs and local directories under `root`, `env` on top of `client_env()`.

    The workers start outside the repo with nothing on PYTHONPATH, as on a cluster node: they import cdgan and
    pipelines (the trials' code) as the venv installed them, prefect and distributed, never this checkout's `tests`.
    """
    root.mkdir(parents=True, exist_ok=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {key: value for key, value in client_env(**env).items() if key != "PYTHONPATH"}
    with ExitStack() as stack:
        dashboard = free_port()
        scheduler = [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1]]
        scheduler += ["--dashboard-address", f"127.0.0.1:{dashboard}"]
        stack.enter_context(serving(scheduler, f"http://127.0.0.1:{dashboard}/health", root / "scheduler.log", env))
        for n in range(n_workers):
            dashboard = free_port()
            worker = [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--host", "127.0.0.1"]
            worker += ["--name", f"worker-{n}", "--dashboard-address", f"127.0.0.1:{dashboard}"]
            worker += ["--local-directory", str(root / f"worker-{n}")]
            log = root / f"worker-{n}.log"
            stack.enter_context(serving(worker, f"http://127.0.0.1:{dashboard}/health", log, env))
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield address
