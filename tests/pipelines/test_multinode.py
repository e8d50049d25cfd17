"""The multi-node path for real: a PostgreSQL server, `mlflow server` on it with local artifacts, a Dask scheduler
with two workers; a 4-trial `cdgan-sweep` on the cluster while two `dvc repro` pipelines register one model on the
same server, then a tracking server restart in the middle of a trial, whose metrics wait in the outbox meanwhile."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL

from cdgan.ranking import MIXTURE_OBJECTIVE
from cdgan.registry import CHAMPION, SCALE_KEYS
from cdgan.store import PENDING_DIR
from tests.conftest import BIN, make_project, start_server, stop_group, tiny_raw
from tests.pipelines.conftest import client_env, dask_cluster, free_port

POSTGRES_TOOLS = ("initdb", "postgres", "pg_isready", "createdb")
MODEL = "cdgan-multinode"
TRIAL = {"data": {"dataset": "grid25", "n_points": 500}, "train": {"eval_every": 0}}  # 2-D: no classifier to train
T = TypeVar("T")


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs: PATH's, else the newest of Debian's /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("postgres")
    folders = [Path(on_path).parent] if on_path else []
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    folders += sorted(debian, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True)
    return next((f for f in folders if all((f / name).is_file() for name in POSTGRES_TOOLS)), None)


PG_BIN = _postgres_bin()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PG_BIN is None, reason=f"PostgreSQL ({', '.join(POSTGRES_TOOLS)}) on neither PATH nor /usr/lib/postgresql/*/bin"
    ),
]


def wait_for(what: str, probe: Callable[[], T | None], seconds: float) -> T:
    """The first value of `probe()` that is not None, polled; fails naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while (found := probe()) is None:
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f}s"
        time.sleep(0.5)
    return found


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL server on a free loopback port with an empty database for MLflow; yields its URL.

    PostgreSQL refuses to run as root, so under root it runs as `nobody`, in a temporary folder of its own (pytest's
    tmp_path is root's alone). Connections are trusted: the server listens on 127.0.0.1 only.
    """
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    port = free_port()
    log = tmp_path / "postgres.log"
    with tempfile.TemporaryDirectory(prefix="cdgan-postgres-") as folder:
        if as_user:
            os.chown(folder, as_user["user"], as_user["group"])
        data = Path(folder) / "data"
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        initdb += ["--locale=C", "--no-sync"]
        serve = [str(PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", folder]
        serve += ["-F"]  # no fsync: a throwaway database
        with log.open("a") as out:
            initialised = subprocess.run(initdb, stdout=out, stderr=subprocess.STDOUT, check=False, **as_user)
            assert initialised.returncode == 0, f"initdb failed:\n{log.read_text()[-3000:]}"
            proc = subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **as_user)
        try:
            client = ["-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
            ready = [str(PG_BIN / "pg_isready"), "-q", *client]
            wait_for(
                "answer from postgres",
                lambda: proc.poll() is not None or not subprocess.run(ready).returncode or None,
                60,
            )
            assert proc.poll() is None, f"postgres exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            subprocess.run([str(PG_BIN / "createdb"), *client, "mlflow"], check=True)
            yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
        finally:
            stop_group(proc)


@dataclass
class TrackingServer:
    """`mlflow server` on a database, artifacts proxied into a local folder; a test stops and restarts it on the same
    port and database."""

    cmd: list[str]
    url: str
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        env = client_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.process = start_server(self.cmd, f"{self.url}/health", self.log, env)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None


@pytest.fixture
def tracking_server(postgres: str, tmp_path: Path) -> Iterator[TrackingServer]:
    """`mlflow server` on the `postgres` database, on a free loopback port."""
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path / "artifacts"),
    ]  # fmt: skip
    server = TrackingServer(cmd, f"http://127.0.0.1:{port}", tmp_path / "mlflow-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A Dask scheduler and two workers whose trials make no HTTP retries of MLflow's own, as in tests/test_tracking.py:
    those would wait a short outage out inside one call, and nothing would reach the outbox."""
    with dask_cluster(tmp_path / "dask", 2, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0") as address:
        yield address


@dataclass(frozen=True)
class Job:
    """A command running in its own process group, its output in `log`."""

    cmd: list[str]
    proc: subprocess.Popen
    log: Path

    def succeeds(self, seconds: float) -> None:
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.cmd[0]} runs after {seconds:.0f}s:\n{self.log.read_text()[-3000:]}") from None
        assert self.proc.returncode == 0, f"{self.cmd} failed:\n{self.log.read_text()[-3000:]}"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[list[str], Path, dict[str, str]], Job]]:
    """Start a command in its own process group; the group is stopped when the test ends, passed or failed."""
    jobs: list[Job] = []

    def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> Job:
        log = tmp_path / f"{cwd.name}-{len(jobs)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        jobs.append(Job(cmd, proc, log))
        return jobs[-1]

    yield start
    for job in jobs:
        stop_group(job.proc)


def assert_recorded(client: MlflowClient, workspace: Path) -> Run:
    """The MLflow run of the pipeline in `workspace` FINISHED with what its files hold: every loss of
    plots/train/losses.csv at its step, the ranked metrics of metrics/eval.json, and both files as artifacts."""
    run_id = json.loads((workspace / "metrics" / "train.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED", f"{workspace.name}: run {run_id} is {run.info.status}"
    with (workspace / "plots" / "train" / "losses.csv").open() as f:
        losses = [(int(row["step"]), float(row["loss_e"])) for row in csv.DictReader(f)]
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss_e"))
    assert history == losses, f"{workspace.name}: loss_e in MLflow differs from losses.csv"
    evaluation = json.loads((workspace / "metrics" / "eval.json").read_text())
    ranked = MIXTURE_OBJECTIVE.keys
    assert {k: run.data.metrics.get(k) for k in ranked} == {k: evaluation[k] for k in ranked}, workspace.name
    files = {"plots/losses.csv": "plots/train/losses.csv", "samples/samples.png": "plots/eval/samples.png"}
    with tempfile.TemporaryDirectory() as folder:
        for artifact, local in files.items():
            copy = Path(client.download_artifacts(run_id, artifact, folder))
            assert copy.read_bytes() == (workspace / local).read_bytes(), f"{workspace.name}: artifact {artifact}"
    return run


def training_run(client: MlflowClient, experiment_id: str) -> str | None:
    """The id of the open trial run (one with a parent) that has logged losses, if any."""
    runs = client.search_runs([experiment_id], "attributes.status = 'RUNNING'")
    found = [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags and "loss_e" in r.data.metrics]
    return found[0] if found else None


def trainer(sweeps: Path) -> psutil.Process | None:
    """The `python -m cdgan.stages.train` process of a trial workspace under `sweeps`, if one runs."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cwd = proc.info["cwd"]
        if "cdgan.stages.train" in (proc.info["cmdline"] or []) and cwd and Path(cwd).is_relative_to(sweeps):
            return proc
    return None


def outbox(path: Path) -> list[dict[str, Any]] | None:
    """The complete lines of an outbox file that hold metrics, or None while it has none."""
    lines = path.read_text().split("\n")[:-1] if path.is_file() else []  # the last may be half-written
    rows = [row for row in map(json.loads, lines) if row["kind"] == "metrics"]
    return rows or None


@pytest.mark.usefixtures("prefect_harness")
def test_a_sweep_on_dask_and_two_pipelines_share_a_postgresql_tracking_server_that_restarts_mid_trial(
    tmp_path: Path, tracking_server: TrackingServer, cluster: str, launch: Callable[..., Job]
) -> None:
    # given a sweep project and two pipeline projects (train seeds 0 and 1) registering one model, all on the server
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.url, PREFECT_API_URL=PREFECT_API_URL.value())
    client = MlflowClient(tracking_server.url)
    project = make_project(tmp_path / "sweep", tiny_raw(**TRIAL))
    pipelines = [
        make_project(tmp_path / f"pipeline-{seed}", tiny_raw(data=TRIAL["data"], train=TRIAL["train"] | {"seed": seed},
                                                            register={"model_name": MODEL}))
        for seed in (0, 1)
    ]  # fmt: skip
    sweep = [str(BIN / "cdgan-sweep"), "--project", str(project), "--cluster", cluster]

    # when a 4-trial sweep runs on the cluster while both pipelines run
    jobs = [launch([*sweep, "--grid", "train.loss=cd,bce", "--grid", "train.seed=0,1", "--name", "four"], project, env)]
    jobs += [launch([str(BIN / "dvc"), "repro"], root, env) for root in pipelines]
    for job in jobs:
        job.succeeds(900)

    # then each trial ran on the cluster, nested under the sweep's run, and FINISHED with its metrics and artifacts
    experiment_id = client.get_experiment_by_name("cdgan-grid25").experiment_id
    runs = client.search_runs([experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("cdgan.kind") == "sweep"]
    trials = sorted((project / "sweeps").glob("four-*/*"))
    children = [assert_recorded(client, workspace) for workspace in trials]
    assert sorted(r.info.run_name for r in children) == ["bce-k2-s0", "bce-k2-s1", "cd-k2-s0", "cd-k2-s1"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert len({r.data.tags["cdgan.dask_worker"] for r in children}) == 2, "both workers ran trials"
    assert parent.info.status == "FINISHED"

    # and both pipelines FINISHED and registered while the sweep ran
    pipeline_runs = [assert_recorded(client, root) for root in pipelines]
    for run in pipeline_runs:
        assert run.info.start_time < parent.info.end_time, "the pipeline started after the sweep"
        assert parent.info.start_time < run.info.end_time, "the pipeline ended before the sweep started"

    # and the champion is the best of the two versions, which the gate could compare
    versions = [client.get_model_version(MODEL, str(n)) for n in (1, 2)]
    assert {r.data.tags["model_version"] for r in pipeline_runs} == {"1", "2"}
    assert len({tuple(v.tags[key] for key in SCALE_KEYS) for v in versions}) == 1, "the versions are comparable"
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    best = max(MIXTURE_OBJECTIVE.score(v.tags) for v in versions)
    assert MIXTURE_OBJECTIVE.score(champion.tags) == best, [(v.version, v.tags.get("alias_reason")) for v in versions]

    # and nothing waits in any outbox
    assert not list(tmp_path.rglob(f"mlruns/{PENDING_DIR}/*"))

    # when the server stops while a trial trains, and comes back on its port and database before the training ends
    longer = ["--set", "train.steps=1500", "--set", "train.log_every=10"]
    outage = launch([*sweep, "--grid", "train.seed=2", *longer, "--name", "outage"], project, env)
    run_id = wait_for("trial logging losses", lambda: training_run(client, experiment_id), 300)
    training = wait_for("training process", lambda: trainer(project / "sweeps"), 30)
    workspace = Path(training.cwd())
    tracking_server.stop()
    kept = wait_for("metrics in the outbox", lambda: outbox(workspace / "mlruns" / PENDING_DIR / f"{run_id}.jsonl"), 60)
    assert training.is_running(), "test setup: the training ended in the outage; raise train.steps"
    training.suspend()  # until the server is back: the outage ends inside the training however long a restart takes
    try:
        tracking_server.start()
    finally:
        training.resume()
    outage.succeeds(600)

    # then the metrics kept in the outbox reached the run, which FINISHED with all its losses, and the outbox is empty
    run = assert_recorded(client, workspace)
    assert run.info.run_id == run_id
    sent = {(key, row["step"], value) for row in kept for key, value in row["values"].items()}
    logged = {(key, m.step, m.value) for key in {k for k, _, _ in sent} for m in client.get_metric_history(run_id, key)}
    assert sent <= logged, sorted(sent - logged)
    assert not list(tmp_path.rglob(f"mlruns/{PENDING_DIR}/*"))
