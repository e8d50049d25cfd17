"""Tracking: lineage tags, runs that outlive a tracking server going away mid-run or at their end (a real
`mlflow server`), and several processes starting runs on one fresh SQLite store at once."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from torch import nn

from cdgan import store, tracking
from cdgan.errors import Terminated
from cdgan.params import Params, Paths
from tests.conftest import BIN, REPO, free_port, run, start_server, stop_group


@pytest.fixture
def _keeps_tracking_uri() -> Iterator[None]:
    """tracked_run points MLflow at the test's store, and MLflow copies that into MLFLOW_TRACKING_URI; later
    tests get the session's store back: the variable as it was before the test (unset: MLflow's default)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)


def test_lineage_names_the_commit_and_ignores_what_dvc_repro_writes(tmp_path: Path) -> None:
    # given a committed project
    (tmp_path / "source.py").write_text("x = 1\n")
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@cdgan", "-c", "user.name=t", "commit", "-qm", "c"]):
        run(["git", *cmd], tmp_path)
    head = run(["git", "rev-parse", "HEAD"], tmp_path).stdout.strip()

    # when `dvc repro` writes its lock, metrics, plots and the .gitignore of its outputs
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    for out in ("metrics/eval.json", "plots/eval/samples.png", "models/.gitignore"):
        (tmp_path / out).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / out).write_text("written by the pipeline\n")
    tags = tracking.lineage_tags(tmp_path)

    # then the checkout still counts as clean, at its commit, with the lock's hash
    lock_hash = hashlib.sha256(b"schema: '2.0'\n").hexdigest()
    assert tags == {"git_commit": head, "git_dirty": "false", "dvc_lock_sha256": lock_hash}

    # and an edited source makes it dirty
    (tmp_path / "source.py").write_text("x = 2\n")
    assert tracking.lineage_tags(tmp_path)["git_dirty"] == "true"


def test_lineage_outside_git_says_unknown(tmp_path: Path) -> None:
    assert tracking.lineage_tags(tmp_path) == {"git_commit": "unknown"}


def test_inside_a_dvc_experiment_the_store_and_resume_dir_are_the_project_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the copy `dvc exp run --queue` runs an experiment in, and the variables DVC sets for its stages
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1234"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.setenv("DVC_EXP_NAME", "brave-shoe")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    monkeypatch.chdir(tmp_path)
    paths = Paths(copy)

    # then outputs stay in the copy (DVC commits them), what outlives the run goes to the project
    assert paths.generator == copy / "models" / "generator.pt"
    assert paths.mlruns == project / "mlruns" and paths.resume == project / ".cdgan" / "resume"
    assert tracking.tracking_uri(paths) == f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    # and its runs and versions name the experiment
    tags = tracking.lineage_tags(copy)
    assert tags["dvc_exp_name"] == "brave-shoe" and tags["dvc_exp_baseline_rev"] == "0" * 40

    # while a plain `dvc repro` (DVC_ROOT, no experiment) keeps everything under the stage's root
    monkeypatch.delenv("DVC_EXP_NAME")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV")
    assert Paths(copy).mlruns == copy / "mlruns" and Paths(copy).resume == copy / ".cdgan" / "resume"
    assert not {"dvc_exp_name", "dvc_exp_baseline_rev"} & set(tracking.lineage_tags(copy))


def test_a_new_run_logs_its_training_data_as_a_dataset_input_once(
    tiny_params: Params,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recwarn: pytest.WarningsRecorder,
    _keeps_tracking_uri: None,
) -> None:
    # given prepared data in a project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = Paths(tmp_path / "project")
    paths.prepared.mkdir(parents=True)
    paths.dataset.write_bytes(b"the prepared data")

    # when a training run starts, and a later stage continues it
    with tracking.tracked_run(tiny_params, paths) as run_id:
        pass
    with tracking.tracked_run(tiny_params, paths, run_id):
        pass

    # then the prepared file is the run's one training input, with the file's sha256 as digest
    inputs = MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1, "a continued run must not log the data again"
    dataset = inputs[0].dataset
    assert dataset.name == tiny_params.data.dataset and dataset.source_type == "local"
    assert hashlib.sha256(b"the prepared data").hexdigest().startswith(dataset.digest)
    assert len(dataset.digest) == tracking.DATASET_DIGEST_CHARS
    assert json.loads(dataset.source)["uri"] == paths.dataset.resolve().as_uri()
    assert [tag.value for tag in inputs[0].tags if tag.key == "mlflow.data.context"] == ["training"]
    # and MLflow's "can be interpreted in multiple ways" about its own twice-registered file source is not shown
    assert not [w for w in recwarn if "interpreted in multiple ways" in str(w.message)], [str(w) for w in recwarn]


def test_a_bad_metric_is_a_bug_and_raises_not_buffered(
    tiny_params: Params, mlflow_uri: str, tmp_path: Path, _keeps_tracking_uri: None
) -> None:
    paths = Paths(tmp_path)
    # given a run that logs a good metric, then one with a name the store refuses
    with pytest.raises(MlflowException, match="bad!key"), tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(0, {"good": 1.0})
        tracking.log_metrics(1, {"bad!key": 1.0})  # sent by the run's sender thread: the refusal comes later

    # then the refusal failed the block and the run, the good metric arrived, and nothing waits to be retried
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.metrics == {"good": 1.0} and run.info.status == "FAILED"
    assert not (paths.mlruns / store.PENDING_DIR / f"{run_id}.jsonl").exists()


def test_a_log_call_does_not_wait_for_the_store(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _keeps_tracking_uri: None
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # given a store whose writes are held up until the test lets them go
    release = threading.Event()

    def held_up(_conn, _cursor, statement: str, *_args) -> None:
        if statement.startswith("INSERT INTO metrics"):
            assert release.wait(60), "test setup: the write was never released"

    with tracking.tracked_run(tiny_params, Paths(tmp_path / "project")) as run_id:
        event.listen(Engine, "before_cursor_execute", held_up)
        try:
            # when the training loop logs while the store is stuck
            for step in range(3):
                tracking.log_metrics(step, {"loss": float(step)})
            # then every call returned before any metric was written
            assert MlflowClient(uri).get_metric_history(run_id, "loss") == []
            release.set()
        finally:
            release.set()
            event.remove(Engine, "before_cursor_execute", held_up)

    # and the end of the run waited for all of them, in order
    history = MlflowClient(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 1.0), (2, 2.0)]


@dataclass
class _Server:
    """A real `mlflow server` (SQLite and artifacts in a temporary folder) that a test stops and starts."""

    cmd: list[str]
    url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_server(self.cmd, f"{self.url}/health", self.log, {**os.environ, **self.env})

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _keeps_tracking_uri: None) -> Iterator[_Server]:
    """A running server that MLFLOW_TRACKING_URI points at, with short retries so outages show quickly."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # only cdgan's retries, so the test is quick
    monkeypatch.setattr(store, "RETRY_DELAYS", (0.2,))
    monkeypatch.setattr(store, "END_RETRY_DELAYS", (0.2, 0.2))
    handle = _Server(cmd, url, env, tmp_path / "server.log")
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


def test_metrics_logged_while_the_server_is_down_are_kept_then_flushed(
    tiny_params: Params, tmp_path: Path, server: _Server
) -> None:
    # given a pipeline run on a real tracking server
    paths = Paths(tmp_path / "project")
    with tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(0, {"loss": 1.0})
        tracking.wait_for_metrics()
        pending = paths.mlruns / store.PENDING_DIR / f"{run_id}.jsonl"

        # when the server stops between two log calls
        server.stop()
        tracking.log_metrics(1, {"loss": 2.0})
        tracking.log_metrics(2, {"loss": 3.0, "fid": 9.0})
        tracking.wait_for_metrics()

        # then nothing raises and the values wait in the pending file
        lines = [json.loads(line) for line in pending.read_text().splitlines()]
        assert [(line["step"], line["values"]) for line in lines] == [
            (1, {"loss": 2.0}),
            (2, {"loss": 3.0, "fid": 9.0}),
        ]

        # and once the server is back, the run's end logs them
        server.start()
    client = MlflowClient(server.url)
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert history == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert client.get_run(run_id).data.metrics["fid"] == 9.0
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not pending.exists(), "a flushed pending file is deleted"


def test_images_and_models_logged_while_the_server_is_down_are_kept_then_flushed(
    tiny_params: Params, tmp_path: Path, server: _Server
) -> None:
    # given a training run on a real tracking server, which stops before a scoring step
    paths = Paths(tmp_path / "project")
    pending = paths.mlruns / store.PENDING_DIR
    grid = np.full((16, 24, 3), 200, np.uint8)
    generator = nn.Sequential(nn.Linear(4, 2)).eval()
    with tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(1, {"loss": 1.0})
        tracking.wait_for_metrics()
        server.stop()

        # when the step's score, its sample grid and the best model so far are logged
        tracking.log_metrics(2, {"train/fid": 3.0})
        tracking.log_image(2, "train/samples", grid)
        tracking.log_model(2, "best_generator", generator, (4,), (2,))
        tracking.wait_for_metrics()

        # then nothing raises, and all three wait in the outbox, in order, the grid and the model as copies
        rows = [json.loads(line) for line in (pending / f"{run_id}.jsonl").read_text().splitlines()]
        assert [row["kind"] for row in rows] == ["metrics", "image", "model"], rows
        assert all(Path(row["path"]).exists() for row in rows[1:]), rows
        server.start()

    # and the run's end sent them once the server was back: the frame at its step, the model with that step's score
    client = MlflowClient(server.url)
    names = [Path(a.path).name for a in client.list_artifacts(run_id, "images")]
    assert [n for n in names if n.startswith("train~samples+step+2+") and n.endswith(".png")], names
    (output,) = client.get_run(run_id).outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert (output.step, model.name, model.status) == (2, "best_generator", LoggedModelStatus.READY)
    assert {(m.key, m.step, m.value) for m in model.metrics} == {("train/fid", 2, 3.0)}
    z = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(mlflow.pytorch.load_model(f"models:/{output.model_id}")(z), generator(z))
    assert not any(pending.iterdir()), "sent lines and copies are deleted"


def test_the_run_end_is_tried_again_with_backoff_until_the_server_is_back(
    tiny_params: Params,
    tmp_path: Path,
    server: _Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given end retries spanning a minute, long enough for a server restart
    monkeypatch.setattr(store, "END_RETRY_DELAYS", (1.0, 2.0, 4.0, 8.0, 16.0, 32.0))
    paths = Paths(tmp_path / "project")
    restart = threading.Thread(target=server.start)

    # when the server stops just before the run ends, and comes back while it ends
    with caplog.at_level(logging.INFO, logger="cdgan.store"), tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(0, {"loss": 1.0})
        tracking.wait_for_metrics()
        server.stop()
        restart.start()
    restart.join()

    # then the end was refused at first, tried again, and reached the store: nothing pending
    assert any("trying again" in record.getMessage() for record in caplog.records), "the first end did not fail"
    assert MlflowClient(server.url).get_run(run_id).info.status == "FINISHED"
    assert not (paths.mlruns / store.PENDING_DIR).exists() or not any((paths.mlruns / store.PENDING_DIR).iterdir())


def test_closing_a_run_on_a_dead_server_does_not_wait_out_mlflow_s_own_retries(
    tiny_params: Params, tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given MLflow's default HTTP retries: 7, with doubling backoff, about 4 minutes per call to a dead server
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    paths = Paths(tmp_path / "project")

    # when the server dies before the run ends
    with tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(0, {"loss": 1.0})
        tracking.wait_for_metrics()
        server.stop()
        closing = time.monotonic()
    seconds = time.monotonic() - closing

    # then the end goes to the pending file after cdgan's own backoff (here 0.4 s), not MLflow's minutes
    assert seconds < 60, f"closing took {seconds:.0f}s: it waited out MLflow's HTTP retries"
    rows = [json.loads(line) for line in (paths.mlruns / store.PENDING_DIR / f"{run_id}.jsonl").open()]
    assert [(row["kind"], row["status"]) for row in rows] == [("end", "FINISHED")]
    assert mlflow.active_run() is None, "the run is still open in this process"


def test_a_run_that_ends_while_the_server_is_down_is_ended_later_from_the_pending_file(
    tiny_params: Params, tmp_path: Path, server: _Server
) -> None:
    paths = Paths(tmp_path / "project")
    pending_dir = paths.mlruns / store.PENDING_DIR
    client = MlflowClient(server.url)
    csv = tmp_path / "losses.csv"
    csv.write_text("step,loss\n1,2.0\n")

    # given a run that logs a metric and an artifact and ends while the server is down
    with tracking.tracked_run(tiny_params, paths) as finished_id:
        tracking.log_metrics(0, {"loss": 1.0})
        tracking.wait_for_metrics()
        server.stop()
        tracking.log_metrics(1, {"loss": 2.0})
        tracking.wait_for_metrics()  # the metric is in the pending file before the artifact's copy
        tracking.log_artifact(csv, "plots")
    csv.write_text("edited after the run\n")

    # then the block did not fail: metric, a copy of the artifact and the end wait in the pending file
    rows = [json.loads(line) for line in (pending_dir / f"{finished_id}.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["metrics", "artifact", "end"], rows
    assert rows[2]["status"] == "FINISHED" and Path(rows[1]["path"]).read_text() == "step,loss\n1,2.0\n"
    server.start()
    assert client.get_run(finished_id).info.status == "RUNNING", "the store never heard of the end"

    # when the next run in this project starts (the server is up), then fails while the server is down
    with (
        pytest.raises(ValueError, match="the stage's own error"),
        tracking.tracked_run(tiny_params, paths) as failed_id,
    ):
        # then the first run was ended from the pending file, with its own end time, metric and artifact
        finished = client.get_run(finished_id)
        assert (finished.info.status, finished.info.end_time) == ("FINISHED", rows[2]["end_time"])
        assert sorted((m.step, m.value) for m in client.get_metric_history(finished_id, "loss")) == [(0, 1.0), (1, 2.0)]
        logged = mlflow.artifacts.download_artifacts(run_id=finished_id, artifact_path="plots/losses.csv",
                                                     dst_path=str(tmp_path / "download"))  # fmt: skip
        assert Path(logged).read_text() == "step,loss\n1,2.0\n", "the artifact as it was when logged"
        assert sorted(p.name for p in pending_dir.iterdir()) == [], "sent lines and copies are deleted"
        server.stop()
        raise ValueError("the stage's own error")  # not an MLflow error: the outage stays out of the way

    # and the FAILED end waits too, until the next run starts
    rows = [json.loads(line) for line in (pending_dir / f"{failed_id}.jsonl").read_text().splitlines()]
    assert [(row["kind"], row.get("status")) for row in rows] == [("end", "FAILED")]
    server.start()
    with tracking.tracked_run(tiny_params, paths):
        assert client.get_run(failed_id).info.status == "FAILED"
    assert client.get_run(finished_id).info.status == "FINISHED"


# Holds the SQLite database's write lock for argv[2] seconds: longer than MLflow's 20 s busy timeout.
_HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_locked_sqlite_store_is_tried_again_not_fatal(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    _keeps_tracking_uri: None,
) -> None:  # fmt: skip
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    paths = Paths(tmp_path / "project")
    with caplog.at_level(logging.INFO, logger="cdgan.store"), tracking.tracked_run(tiny_params, paths) as run_id:
        # given another process holding the database's write lock past MLflow's busy timeout (20 s)
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(db), "22"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "locked\n"

        # when the run logs a metric
        tracking.log_metrics(0, {"loss": 1.0})
    holder.wait()

    # then the store said "database is locked", cdgan tried again, and the metric reached the run directly
    assert any("database is locked" in record.getMessage() for record in caplog.records), "the lock did not bite"
    assert MlflowClient(uri).get_run(run_id).data.metrics == {"loss": 1.0}
    assert not (paths.mlruns / store.PENDING_DIR).exists(), "nothing needed the pending file"


@pytest.fixture
def _signals_raise() -> Iterator[None]:
    """For the test, as under `cdgan`'s CLI in a terminal: SIGTERM raises Terminated and SIGINT KeyboardInterrupt
    in this process (pytest run as a background job, or as a pytest-xdist worker, ignores SIGINT)."""

    def terminate(_signum: int, _frame: object) -> None:
        raise Terminated

    before = {signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    before[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("signum", "raised", "status"),
    [(signal.SIGINT, KeyboardInterrupt, "FAILED"), (signal.SIGTERM, Terminated, "KILLED")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_during_a_sqlite_write_lands_after_it_and_the_run_still_ends(
    signum: signal.Signals, raised: type[BaseException], status: str, tiny_params: Params, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, _keeps_tracking_uri: None, _signals_raise: None,
) -> None:  # fmt: skip
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    paths = Paths(tmp_path / "project")
    sent: list[str] = []

    def signal_inside_the_tags_insert(_conn, _cursor, statement: str, *_args) -> None:
        if statement.startswith("INSERT INTO tags") and not sent:
            sent.append(statement)
            signal.raise_signal(signum)  # Python runs the handler here, inside the write's transaction

    # given a run on a SQLite store
    with pytest.raises(raised), tracking.tracked_run(tiny_params, paths) as run_id:
        tracking.log_metrics(0, {"loss": 1.0})
        event.listen(Engine, "after_cursor_execute", signal_inside_the_tags_insert)
        try:
            # when the signal comes in the middle of writing a tag (a store call of the main thread)
            tracking.set_tags({"stage": "train"})
        finally:
            event.remove(Engine, "after_cursor_execute", signal_inside_the_tags_insert)
        pytest.fail(f"{signum.name} was lost")
    assert sent, "test setup: the tag was not written by an INSERT"

    # then the write finished first, the metric logged before it arrived, and the run ended (FAILED for
    # Ctrl-C, KILLED for SIGTERM) in the store itself: a connection cut mid-write would hold the database
    # lock, and the end would wait in the pending file, so nothing is pending
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["stage"] == "train" and run.data.metrics == {"loss": 1.0}
    assert run.info.status == status
    assert not (paths.mlruns / store.PENDING_DIR).exists()


# Starts a run in a fresh process once the test says go, so that several open one new SQLite store together.
_START_TOGETHER = """
import sys, time
from pathlib import Path
from cdgan import tracking
from cdgan.params import Params, Paths
ready, go, project = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
with tracking.tracked_run(Params(), Paths(project)) as run_id:
    tracking.log_metrics(0, {"loss": 1.0})
print(run_id)
"""


def test_processes_starting_runs_on_one_new_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    # given three processes, imports done, pointed at one SQLite file that does not exist yet
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    procs = []
    for i in range(3):
        cmd = [sys.executable, "-c", _START_TOGETHER, str(tmp_path / f"ready{i}"), str(go), str(tmp_path / f"p{i}")]
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    deadline = time.monotonic() + 180
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)) and time.monotonic() < deadline:
        time.sleep(0.05)

    # when they create the store's tables, the experiment and a run in it at the same moment
    go.touch()
    results = [proc.communicate(timeout=300) for proc in procs]

    # then every one succeeds, with its own run, all in one experiment
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    run_ids = [out.split()[-1] for out, _ in results]
    client = MlflowClient(uri)
    runs = [client.get_run(run_id) for run_id in run_ids]
    assert len(set(run_ids)) == 3 and len({r.info.experiment_id for r in runs}) == 1
    assert all(r.info.status == "FINISHED" and r.data.metrics == {"loss": 1.0} for r in runs)


def test_a_run_is_continued_whatever_experiment_the_process_had_active(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _keeps_tracking_uri: None
) -> None:
    # given a pipeline run, and then another experiment made active in the process (as a notebook would)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = Paths(tmp_path / "project")
    with tracking.tracked_run(tiny_params, paths) as run_id:
        pass
    mlflow.set_experiment("something-else")
    # when a later stage continues the run
    with tracking.tracked_run(tiny_params, paths, run_id) as continued:
        pass
    # then it is the same run, ended FINISHED again
    assert continued == run_id
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
