"""MLflow runs: the store, one run per pipeline execution, params, metrics, artifacts and the run's end (kept
while the store is down), lineage tags, and the lock that serialises writers of one store on this machine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import requests
from filelock import FileLock, Timeout
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
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
RETRY_DELAYS = (1.0, 2.0)  # seconds before the 2nd and 3rd try of a store call (after MLflow's own HTTP retries)
END_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # the run's end is tried longer: it is the one call that settles its status
OFFLINE_SECONDS = 30.0  # after a log call failed for good, later ones go straight to the pending file this long
PENDING_DIR = "pending"  # under mlruns/: <run id>.jsonl (and <run id>/ for artifacts) the store did not take yet
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"  # MLflow's retries inside each call: 7, minutes in all
EXPERIMENT_TAGS = {"dvc_exp_name": "DVC_EXP_NAME", "dvc_exp_baseline_rev": "DVC_EXP_BASELINE_REV"}  # set by dvc exp run
DATASET_DIGEST_CHARS = 16  # MLflow keeps at most 36 characters of a dataset digest
LOCK_SECONDS = 300.0  # waiting longer for a store lock means a stuck process: fail with its path
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
        # MLflow creates a fresh database's tables without a lock: two processes starting on one new file
        # both try, and one fails. Opening both stores (tracking, registry) under the lock creates them once.
        with store_lock(uri, "init"):
            retried(lambda: MlflowClient(uri).search_experiments(max_results=1))
            retried(lambda: MlflowClient(uri).search_registered_models(max_results=1))
    mlflow.set_tracking_uri(uri)
    return uri


def _sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


@contextmanager
def store_lock(uri: str, key: str) -> Iterator[None]:
    """An exclusive OS file lock named `key`, shared by every process on this machine that uses store `uri`.

    For a SQLite store the lock file sits beside the database (.cdgan-locks/), so every process that opens
    that file shares it, however its URI spells the path; for other stores it sits in the temp directory
    under a hash of the URI, so it serialises the processes on this machine that use that exact URI. It is
    an flock: the kernel drops it when its process dies, so a crash never leaves the store locked (it does
    not hold across machines, nor reliably on network file systems).
    """
    is_sqlite = urlparse(uri).scheme == "sqlite"
    folder = _sqlite_path(uri).parent / ".cdgan-locks" if is_sqlite else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only folder: this process cannot write the store there either, any lock will do
            folder = None
    if folder is None:
        key_uri = str(_sqlite_path(uri).resolve()) if is_sqlite else uri
        folder = Path(tempfile.gettempdir()) / "cdgan-locks" / hashlib.sha256(key_uri.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]", "_", key)[:60] + "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    lock = FileLock(folder / f"{name}.lock", timeout=LOCK_SECONDS, mode=0o666)
    try:
        lock.acquire()
    except Timeout:
        raise CdganError(
            f"{lock.lock_file}: held by another process for over {LOCK_SECONDS:.0f}s (a cdgan stage writing to "
            f"{uri}); wait for it, or stop that process if it hangs"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _experiment_id(name: str, uri: str) -> str:
    client = MlflowClient()
    experiment = retried(lambda: client.get_experiment_by_name(name))
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if urlparse(uri).scheme == "sqlite":  # keep artifacts beside the database, not in the working directory
        artifact_location = (_sqlite_path(uri).parent / "artifacts").resolve().as_uri()
    try:
        return retried(lambda: client.create_experiment(name, artifact_location=artifact_location))
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a concurrent run created it meanwhile


def flat_params(params: Params) -> dict[str, Any]:
    """Dotted keys as in params.yaml and `dvc exp run -S`: {"train.cd_k": 5, ...}."""
    return {
        f"{section}.{key}": value for section, values in params.model_dump().items() for key, value in values.items()
    }


def lineage_tags(root: Path) -> dict[str, str]:
    """git_commit, git_dirty and dvc_lock_sha256 of the project at `root`, as the running stage finds it.

    Inside `dvc exp run` the commit is the experiment's baseline and params.yaml differs from it (git_dirty
    "true"); the tags dvc_exp_name and dvc_exp_baseline_rev name the experiment, which DVC commits only after
    its last stage.

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
    for tag, env in EXPERIMENT_TAGS.items():  # `dvc exp apply <dvc_exp_name>` brings that experiment back
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


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
    _flush_closed(paths)
    experiment_id = _experiment_id(experiment_name(params), uri)
    run = retried(lambda: mlflow.start_run(experiment_id=experiment_id, run_name=name))
    with _open_run(paths, run.info.run_id):
        retried(lambda: mlflow.log_params({f"sweep.{key}": value for key, value in sweep_params.items()}))
        retried(lambda: mlflow.set_tags(lineage_tags(paths.root) | {"cdgan.kind": "sweep"}))
        yield run.info.run_id


@contextmanager
def tracked_run(params: Params, paths: Paths, run_id: str | None = None) -> Iterator[str]:
    """Open the pipeline's run (new, or `run_id` to continue it); on any error it ends FAILED.

    A new run logs params.yaml's values and the prepared data as its training dataset input.

    Every store call is tried again on transient errors (RETRY_DELAYS). Inside the block, metrics and
    artifacts the store cannot take wait in mlruns/pending/ (see `log_metrics`), and so does the run's end
    (FINISHED or FAILED, with its time) if the store is still down after END_RETRY_DELAYS: logging metrics and
    artifacts and ending the run never fail the block because the store went away. What a run left there is
    sent at its close if the store is back, else by the next `tracked_run` in this project, before it starts.
    """
    uri = connect(paths)
    _flush_closed(paths)
    is_new = run_id is None
    if is_new:
        experiment_id = _experiment_id(experiment_name(params), uri)
        run_id = retried(
            lambda: mlflow.start_run(
                experiment_id=experiment_id,
                run_name=f"{params.train.loss}-k{params.train.cd_k}-s{params.train.seed}",
                parent_run_id=os.environ.get(PARENT_RUN_ENV) or None,
            )
        ).info.run_id
    else:  # MLflow refuses to continue a run outside the process's active experiment (a notebook's, a test's)
        experiment_id = retried(lambda: mlflow.get_run(run_id)).info.experiment_id
        retried(lambda: mlflow.set_experiment(experiment_id=experiment_id))
        retried(lambda: mlflow.start_run(run_id=run_id))
    with _open_run(paths, run_id):
        if is_new:
            retried(lambda: mlflow.log_params(flat_params(params)))
            if paths.dataset.exists():  # the run's training data, in the UI's dataset column
                dataset = training_dataset(paths.dataset, params.data.dataset)
                retried(lambda: mlflow.log_input(dataset, context="training"))
        retried(lambda: mlflow.set_tags(lineage_tags(paths.root)))
        yield run_id


def training_dataset(path: Path, name: str) -> MetaDataset:
    """The prepared data as an MLflow dataset: its file, and as digest the first DATASET_DIGEST_CHARS hex digits
    of the file's sha256 (the whole hash is the data_sha256 tag of a registered version)."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:DATASET_DIGEST_CHARS]
    return MetaDataset(resolve_dataset_source(path.resolve().as_uri()), name=name, digest=digest)


@contextmanager
def _open_run(paths: Paths, run_id: str) -> Iterator[None]:
    """The active run's metric sender and pending buffer for the block, both emptied when it ends; then the run
    ends, FINISHED or FAILED (an error or interrupt), never left RUNNING."""
    run = _OpenRun(run_id, _Pending(paths.mlruns / PENDING_DIR / f"{run_id}.jsonl"))
    token = _open.set(run)
    try:
        try:
            yield
        finally:  # also after an error: what was measured still reaches the (FAILED) run
            run.sender.shutdown(wait=True)  # queued metrics reach the store or the pending file first
            _flush(run.pending, run_id)
        run.raise_refused()
    except BaseException:
        _end_run(run_id, "FAILED", run.pending)
        raise
    finally:
        _open.reset(token)
    _end_run(run_id, "FINISHED", run.pending)


def _end_run(run_id: str, status: str, pending: _Pending) -> None:
    """End the active run; a store that stays down through END_RETRY_DELAYS gets the end later, from the
    pending file, with this end time (the retries only delay the close; the stage itself succeeds)."""
    end_time = int(time.time() * 1000)

    def end() -> None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            with _without_http_retries():  # a dead server fails this first try at once; the backoff is ours
                mlflow.end_run(status)  # takes the run off this process's stack first, then tells the store
        else:  # a retry: the run is off the stack already
            _check_reachable()
            MlflowClient().set_terminated(run_id, status, end_time)

    try:
        retried(end, END_RETRY_DELAYS)
    except Exception as err:
        if not is_transient(err):
            raise
        pending.append({"kind": "end", "status": status, "end_time": end_time})
        _log.warning("MLflow did not take the end (%s) of run %s (%s); kept in %s", status, run_id, err, pending.path)


def set_tags(tags: dict[str, str]) -> None:
    retried(lambda: mlflow.set_tags(tags))


@dataclass
class _Pending:
    """What the open run could not log yet, one JSON line per call, in order, until sent: metrics (step, time,
    values), artifacts (a copy under <run id>/) and the run's end (status, time)."""

    path: Path  # mlruns/pending/<run id>.jsonl
    retry_at: float = 0.0  # time.monotonic() before which log calls skip the store

    @property
    def files(self) -> Path:
        return self.path.with_suffix("")  # mlruns/pending/<run id>/: copies of artifacts not yet logged

    def append(self, line: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:  # appends, not write_atomic: a crash keeps every line written so far
            f.write(json.dumps(line) + "\n")

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def is_closed(self) -> bool:
        """The run ended here (its end is a line): no process appends to this file any more."""
        return self.path.exists() and any(row.get("kind") == "end" for row in self.rows())


@dataclass
class _OpenRun:
    """The run `_open_run` holds: metrics go to the store from one thread of their own, in order, so a log
    call never waits on the store; what the store cannot take goes to `pending`."""

    run_id: str
    pending: _Pending
    client: MlflowClient = field(default_factory=MlflowClient)  # explicit run ids: MLflow's active run is per thread
    sender: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdgan-metrics")
    )
    refused: Exception | None = None  # the first metric the store refused as a bad request

    def send_metrics(self, row: dict[str, Any]) -> None:
        try:
            if not _logged(
                lambda: _send(self.client, self.run_id, row), f"metrics at step {row['step']}", self.pending
            ):
                self.pending.append(row)
        except Exception as err:  # not transient: a bad name or value, the caller's bug
            self.refused = self.refused or err

    def raise_refused(self) -> None:
        if self.refused is not None:
            raise self.refused


_open: ContextVar[_OpenRun | None] = ContextVar("cdgan_open_run", default=None)  # set by _open_run


def log_metrics(step: int | None, values: dict[str, float]) -> None:
    """Log to the active run. Inside `tracked_run` the call only queues the values for the run's sender thread
    (no wait on the store), and a metric the store cannot take never fails the run; one it refuses as a bad
    request (a bad name or value) raises at the next log call or at the end of the block.

    Transient errors (HTTP 5xx or 429, connection errors, a locked SQLite file) are tried again after
    RETRY_DELAYS; if the store still fails, the values go to mlruns/pending/<run id>.jsonl with their step
    and time, later calls skip the store for OFFLINE_SECONDS, and the end of `tracked_run` logs the file and
    deletes it (if the store is still down then, the next `tracked_run` in this project does). MLflow's own
    HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, minutes by default) run inside each try: lower them to
    fall back sooner. Delivery is at least once: a request the server took but did not answer in time may
    be logged twice.
    """
    timestamp = int(time.time() * 1000)  # the time of the call, whenever the values reach the store
    floats = {key: float(value) for key, value in values.items()}  # numpy scalars are not JSON
    run = _open.get()
    if run is None:
        retried(lambda: mlflow.log_metrics(floats, step=step, timestamp=timestamp))
        return
    run.raise_refused()
    run.sender.submit(run.send_metrics, {"kind": "metrics", "step": step, "timestamp": timestamp, "values": floats})


def wait_for_metrics() -> None:
    """Return once the open run's queued metrics reached the store or its pending file."""
    run = _open.get()
    if run is not None:
        run.sender.submit(lambda: None).result()  # one sender thread: its queue is done when this is


def log_artifact(path: Path, folder: str | None = None) -> None:
    """Log a file into the active run; inside `tracked_run`, as `log_metrics` does, a store that cannot take
    it gets a copy later (kept under mlruns/pending/<run id>/, so later edits of `path` do not change it)."""
    run = _open.get()
    pending = run.pending if run is not None else None
    if not _logged(lambda: mlflow.log_artifact(str(path), artifact_path=folder), f"artifact {path}", pending):
        pending.files.mkdir(parents=True, exist_ok=True)
        copy = Path(tempfile.mkdtemp(dir=pending.files)) / path.name  # one folder per call: names may repeat
        shutil.copy2(path, copy)
        pending.append({"kind": "artifact", "path": str(copy), "folder": folder})


def _logged(call: Callable[[], Any], what: str, pending: _Pending | None) -> bool:
    """Run a log call: True if the store took it, False if it belongs in the open run's `pending` file."""
    if pending is not None and time.monotonic() < pending.retry_at:
        return False
    try:
        retried(call)
        return True
    except Exception as err:
        if pending is None or not is_transient(err):
            raise
        pending.retry_at = time.monotonic() + OFFLINE_SECONDS
        _log.warning("MLflow did not take %s (%s); kept in %s", what, err, pending.path)
        return False


def is_transient(err: BaseException) -> bool:
    """Worth another try: the store was unreachable, overloaded or locked, not a bad request.

    A server that cannot be reached surfaces as MlflowException INTERNAL_ERROR (500), a locked SQLite file
    ("database is locked") as TEMPORARILY_UNAVAILABLE (503), a rate limit as 429.
    """
    if isinstance(err, MlflowException):
        return err.get_http_status_code() >= 500 or err.get_http_status_code() == 429
    return isinstance(err, requests.RequestException | ConnectionError | TimeoutError)


def retried(call: Callable[[], Any], delays: tuple[float, ...] | None = None) -> Any:
    """`call()`, tried again after each of `delays` (default RETRY_DELAYS) seconds while it fails transiently.

    At least once: use it for calls whose repetition is harmless (a SQLite error rolls the call back; a
    server that took a request but did not answer may see it twice).
    """
    for delay in (*(RETRY_DELAYS if delays is None else delays), None):  # None: the last try
        try:
            with _ctrl_c_after_the_call():
                return call()
        except Exception as err:
            if delay is None or not is_transient(err):
                raise
            _log.info("MLflow store call failed (%s); trying again in %.0fs", err, delay)
            time.sleep(delay)


@contextmanager
def _ctrl_c_after_the_call() -> Iterator[None]:
    """Ctrl-C during a SQLite store call takes effect when the call returns: a KeyboardInterrupt inside a
    write leaves its connection holding the database lock, and every later call of this process, the run's
    FAILED end included, then waits on "database is locked". HTTP stores keep Ctrl-C at once (a call may
    retry for minutes), and so do threads other than the main one, which cannot set signal handlers."""
    deferrable = (
        mlflow.get_tracking_uri().startswith("sqlite:")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if not deferrable:
        yield
        return
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pressed:
            raise KeyboardInterrupt


def _flush(pending: _Pending, run_id: str) -> None:
    """Send the pending file's lines to the run, in order, then delete it and its copies; lines the store
    still refuses stay."""
    if not pending.path.exists():
        return
    rows = pending.rows()
    client = MlflowClient()
    try:
        retried(_check_reachable)
    except requests.RequestException as err:
        _log.warning("MLflow is still unreachable (%s); %d lines of run %s stay in %s", err, len(rows), run_id,
                     pending.path)  # fmt: skip
        return
    for done, row in enumerate(rows):
        try:
            retried(lambda row=row: _send(client, run_id, row))
        except Exception as err:
            if not is_transient(err):
                raise
            left = "".join(json.dumps(row) + "\n" for row in rows[done:])
            write_atomic(pending.path, lambda tmp, left=left: tmp.write_text(left))
            _log.warning("MLflow still refuses %d pending lines of run %s (%s); kept in %s", len(rows) - done,
                         run_id, err, pending.path)  # fmt: skip
            return
    pending.path.unlink()
    if pending.files.exists():
        shutil.rmtree(pending.files)


@contextmanager
def _without_http_retries() -> Iterator[None]:
    """MLflow's own HTTP retries off for the block (it reads MLFLOW_HTTP_REQUEST_MAX_RETRIES at each call)."""
    before = os.environ.get(HTTP_RETRIES_ENV)
    os.environ[HTTP_RETRIES_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[HTTP_RETRIES_ENV]
        else:
            os.environ[HTTP_RETRIES_ENV] = before


def _check_reachable() -> None:
    """Fail at once (a transient RequestException) if a tracking server does not answer /health.

    MLflow retries a call to a dead server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES, 7 by default, with
    doubling backoff); the close of a run probes first, so that waiting out an outage takes END_RETRY_DELAYS,
    not that times each try. Local stores need no probe.
    """
    uri = mlflow.get_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()


def _send(client: MlflowClient, run_id: str, row: dict[str, Any]) -> None:
    kind = row.get("kind", "metrics")  # lines written before kinds existed hold metrics
    if kind == "metrics":
        batch = [Metric(key, value, row["timestamp"], row["step"] or 0) for key, value in row["values"].items()]
        client.log_batch(run_id, metrics=batch)
    elif kind == "artifact":
        client.log_artifact(run_id, row["path"], row["folder"])
    else:
        client.set_terminated(run_id, row["status"], row["end_time"])


def _flush_closed(paths: Paths) -> None:
    """Send what runs that ended while the store was down left in this project's mlruns/pending/.

    Only files whose run has ended (an `end` line): a file without one belongs to a run that is open in a
    process now, or that died, and goes out when a stage continues that run. A run this store does not
    know (MLFLOW_TRACKING_URI changed since) keeps its file for the store that holds it.
    """
    folder = paths.mlruns / PENDING_DIR
    if not folder.is_dir():
        return
    client = MlflowClient()
    for path in sorted(folder.glob("*.jsonl")):
        pending = _Pending(path)
        if not pending.is_closed():
            continue
        try:
            retried(lambda path=path: client.get_run(path.stem))
        except Exception as err:
            if is_transient(err) or (isinstance(err, MlflowException) and err.get_http_status_code() == 404):
                continue  # the store is still down (next time), or the run is another store's
            raise
        _flush(pending, path.stem)
