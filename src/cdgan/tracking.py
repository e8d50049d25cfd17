"""MLflow runs: the store, one run per pipeline execution, params, metrics (kept while it is down), lineage tags."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cdgan.errors import CdganError
from cdgan.files import write_atomic
from cdgan.params import Params, Paths

DEFAULT_DB = "mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # `make serve` / `mlflow ui` default
PARENT_RUN_ENV = "CDGAN_PARENT_RUN_ID"  # set by the sweep flow: trial runs nest under the sweep's run
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "plots", "**/.gitignore")  # written by `dvc repro` itself
RETRY_DELAYS = (1.0, 2.0)  # seconds before the 2nd and 3rd try of a log call (after MLflow's own HTTP retries)
OFFLINE_SECONDS = 30.0  # after a log call failed for good, later ones go straight to the pending file this long
PENDING_DIR = "pending"  # under mlruns/: <run id>.jsonl, metrics the store did not take yet
_log = logging.getLogger(__name__)


def tracking_uri(paths: Paths) -> str:
    """An existing MLFLOW_TRACKING_URI wins; otherwise the embedded SQLite store in mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(paths.mlruns / DEFAULT_DB).resolve()}"


def connect(paths: Paths) -> str:
    """Point MLflow at the store and fail fast, before any work, if it cannot be reached."""
    uri = tracking_uri(paths)
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise CdganError(
                f"MLFLOW_TRACKING_URI={uri} is unreachable ({type(err).__name__}); start the server "
                "(mlflow server) or unset MLFLOW_TRACKING_URI to use the local store in mlruns/"
            ) from None
    elif scheme == "sqlite":
        _sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


def _experiment_id(name: str, uri: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if urlparse(uri).scheme == "sqlite":  # keep artifacts beside the database, not in the working directory
        artifact_location = (_sqlite_path(uri).parent / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifact_location)


def flat_params(params: Params) -> dict[str, Any]:
    """Dotted keys as in params.yaml and `dvc exp run -S`: {"train.cd_k": 5, ...}."""
    return {
        f"{section}.{key}": value for section, values in params.model_dump().items() for key, value in values.items()
    }


def lineage_tags(root: Path) -> dict[str, str]:
    """git_commit, git_dirty and dvc_lock_sha256 of the project at `root`, as the running stage finds it.

    git_dirty is "true" when files the commit holds, or new files, differ from it; what `dvc repro` writes
    (dvc.lock, metrics/, plots/, the .gitignore files of outputs) does not count, or every run would call
    itself dirty. dvc.lock is hashed as the stage starts: DVC writes a stage's own entry after the stage ends,
    so the hash pins the stages before it (for `register`: prepare, train, evaluate of this `dvc repro`).
    """
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", *(f":(exclude,glob){out}" for out in PIPELINE_OUTPUTS)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        tags["git_commit"] = commit.stdout.strip()
        tags["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.CalledProcessError):
        tags["git_commit"] = "unknown"
    lock = root / "dvc.lock"
    if lock.exists():
        tags["dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


@contextmanager
def _ends_active_run() -> Iterator[None]:
    """FINISHED when the block completes; FAILED on any error or interrupt, never left RUNNING."""
    try:
        yield
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def run_link(paths: Paths, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server itself, or the local UI `make serve` starts."""
    uri = tracking_uri(paths)
    base = uri.rstrip("/") if urlparse(uri).scheme in ("http", "https") else LOCAL_UI
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def experiment_name(params: Params) -> str:
    return f"cdgan-{params.data.dataset}"  # one experiment per data set: its runs compare like with like


@contextmanager
def sweep_run(params: Params, paths: Paths, name: str, sweep_params: dict[str, Any]) -> Iterator[str]:
    """The parent run of a sweep, in the data set's experiment; trials nest under it through PARENT_RUN_ENV."""
    uri = connect(paths)
    run = mlflow.start_run(experiment_id=_experiment_id(experiment_name(params), uri), run_name=name)
    mlflow.log_params({f"sweep.{key}": value for key, value in sweep_params.items()})
    mlflow.set_tags(lineage_tags(paths.root) | {"cdgan.kind": "sweep"})
    with _ends_active_run():
        yield run.info.run_id


@contextmanager
def tracked_run(params: Params, paths: Paths, run_id: str | None = None) -> Iterator[str]:
    """Open the pipeline's run (new, or `run_id` to continue it); on any error it ends FAILED."""
    uri = connect(paths)
    if run_id is None:
        experiment_id = _experiment_id(experiment_name(params), uri)
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=f"{params.train.loss}-k{params.train.cd_k}-s{params.train.seed}",
            parent_run_id=os.environ.get(PARENT_RUN_ENV) or None,
        )
        mlflow.log_params(flat_params(params))
    else:
        run = mlflow.start_run(run_id=run_id)
    mlflow.set_tags(lineage_tags(paths.root))
    pending = _Pending(paths.mlruns / PENDING_DIR / f"{run.info.run_id}.jsonl")
    token = _pending.set(pending)
    try:
        with _ends_active_run():
            try:
                yield run.info.run_id
            finally:  # also after an error: what was measured still reaches the (FAILED) run
                _flush(pending, run.info.run_id)
    finally:
        _pending.reset(token)


def set_tags(tags: dict[str, str]) -> None:
    mlflow.set_tags(tags)


@dataclass
class _Pending:
    """The open run's metrics that the store did not take, one JSON line per log call, until flushed."""

    path: Path  # mlruns/pending/<run id>.jsonl
    retry_at: float = 0.0  # time.monotonic() before which log calls skip the store

    def append(self, step: int | None, timestamp: int, values: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # appends, not write_atomic: a crash keeps every line written so far
            floats = {key: float(value) for key, value in values.items()}  # numpy scalars are not JSON
            f.write(json.dumps({"step": step, "timestamp": timestamp, "values": floats}) + "\n")


_pending: ContextVar[_Pending | None] = ContextVar("cdgan_pending_metrics", default=None)  # set by tracked_run


def log_metrics(step: int | None, values: dict[str, float]) -> None:
    """Log to the active run. Inside `tracked_run` a metric the store cannot take never fails the run.

    Transient errors (HTTP 5xx or 429, connection errors) are tried again after RETRY_DELAYS; if the store
    still fails, the values go to mlruns/pending/<run id>.jsonl with their step and time, later calls skip
    the store for OFFLINE_SECONDS, and the end of `tracked_run` logs the file and deletes it (a later stage
    continuing the same run tries again if the store is still down then). MLflow's own HTTP retries
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, minutes by default) run inside each try: lower them to fall back sooner.
    Delivery is at least once: a request the server took but did not answer in time may be logged twice.
    """
    timestamp = int(time.time() * 1000)  # kept with buffered values, so a later flush logs the original time
    pending = _pending.get()
    if pending is None or time.monotonic() >= pending.retry_at:
        try:
            _retried(lambda: mlflow.log_metrics(values, step=step, timestamp=timestamp))
            return
        except Exception as err:
            if pending is None or not _is_transient(err):
                raise
            pending.retry_at = time.monotonic() + OFFLINE_SECONDS
            _log.warning("MLflow did not take metrics at step %s (%s); kept in %s", step, err, pending.path)
    pending.append(step, timestamp, values)


def _is_transient(err: BaseException) -> bool:
    """Worth another try: the store was unreachable, overloaded or locked, not a bad request.

    A server that cannot be reached surfaces as MlflowException INTERNAL_ERROR (500), a locked SQLite file
    as TEMPORARILY_UNAVAILABLE (503), a rate limit as 429.
    """
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500 or err.get_http_status_code() == 429
    return isinstance(err, requests.RequestException | ConnectionError | TimeoutError)


def _retried(call: Callable[[], Any]) -> Any:
    for delay in RETRY_DELAYS:
        try:
            return call()
        except Exception as err:
            if not _is_transient(err):
                raise
            time.sleep(delay)
    return call()  # the last try: its error goes to the caller


def _flush(pending: _Pending, run_id: str) -> None:
    """Log the pending file's lines into the run and delete them; lines the store still refuses stay."""
    if not pending.path.exists():
        return
    rows = [json.loads(line) for line in pending.path.read_text().splitlines() if line.strip()]
    client = MlflowClient()
    for done, row in enumerate(rows):
        batch = [Metric(key, value, row["timestamp"], row["step"] or 0) for key, value in row["values"].items()]
        try:
            _retried(lambda batch=batch: client.log_batch(run_id, metrics=batch))
        except Exception as err:
            if not _is_transient(err):
                raise
            left = "".join(json.dumps(row) + "\n" for row in rows[done:])
            write_atomic(pending.path, lambda tmp, left=left: tmp.write_text(left))
            _log.warning("MLflow still refuses %d pending metric lines (%s); kept in %s", len(rows) - done, err,
                         pending.path)  # fmt: skip
            return
    pending.path.unlink()


def log_artifact(path: Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=folder)
