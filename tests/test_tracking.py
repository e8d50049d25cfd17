"""Tracking: lineage tags, and metrics that outlive a tracking server going away mid-run (a real `mlflow server`)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cdgan import tracking
from cdgan.params import Params, Paths
from tests.conftest import BIN, run
from tests.test_serving import free_port, start_server, stop_server


@pytest.fixture
def _keeps_tracking_uri() -> Iterator[None]:
    """tracked_run points MLflow at the test's store; later tests get the session's store back."""
    before = mlflow.get_tracking_uri()
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


def test_a_bad_metric_is_a_bug_and_raises_not_buffered(
    tiny_params: Params, mlflow_uri: str, tmp_path: Path, _keeps_tracking_uri: None
) -> None:
    paths = Paths(tmp_path)
    with tracking.tracked_run(tiny_params, paths) as run_id:
        with pytest.raises(MlflowException, match="bad!key"):
            tracking.log_metrics(0, {"bad!key": 1.0})
        tracking.log_metrics(1, {"good": 1.0})
    assert not (paths.mlruns / tracking.PENDING_DIR / f"{run_id}.jsonl").exists()
    assert MlflowClient(mlflow_uri).get_run(run_id).data.metrics == {"good": 1.0}


def test_metrics_logged_while_the_server_is_down_are_kept_then_flushed(
    tiny_params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _keeps_tracking_uri: None
) -> None:
    # given a real tracking server (SQLite and artifacts in tmp_path) and a pipeline run on it
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "server.log"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # only cdgan's retries, so the test is quick
    monkeypatch.setattr(tracking, "RETRY_DELAYS", (0.2,))
    paths = Paths(tmp_path / "project")
    server = start_server(cmd, f"{uri}/health", env, log)
    try:
        with tracking.tracked_run(tiny_params, paths) as run_id:
            tracking.log_metrics(0, {"loss": 1.0})
            pending = paths.mlruns / tracking.PENDING_DIR / f"{run_id}.jsonl"

            # when the server stops between two log calls
            stop_server(server)
            tracking.log_metrics(1, {"loss": 2.0})
            tracking.log_metrics(2, {"loss": 3.0, "fid": 9.0})

            # then nothing raises and the values wait in the pending file
            lines = [json.loads(line) for line in pending.read_text().splitlines()]
            assert [(line["step"], line["values"]) for line in lines] == [
                (1, {"loss": 2.0}),
                (2, {"loss": 3.0, "fid": 9.0}),
            ]

            # and once the server is back, the run's end logs them
            server = start_server(cmd, f"{uri}/health", env, log)
        client = MlflowClient(uri)
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
        assert history == [(0, 1.0), (1, 2.0), (2, 3.0)]
        assert client.get_run(run_id).data.metrics["fid"] == 9.0
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not pending.exists(), "a flushed pending file is deleted"
    finally:
        stop_server(server)
