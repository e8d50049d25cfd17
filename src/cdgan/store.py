"""Getting a run's records into the MLflow store: the store's set-up and locks, retries of transient failures,
one sender thread per open run, the outbox (mlruns/pending/) for what the store cannot take yet, and store calls
that Ctrl-C or SIGTERM cannot cut in half. Only what MLflow does not do itself."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import requests
from filelock import FileLock, Timeout
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY, MLFLOW_GIT_REPO_URL
from sqlalchemy.exc import SQLAlchemyError

from cdgan.errors import CdganError, Terminated
from cdgan.files import write_atomic

RETRY_DELAYS = (1.0, 2.0)  # seconds before the 2nd and 3rd try of a store call (after MLflow's own HTTP retries)
END_RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0)  # the run's end is tried longer: it is the one call that settles its status
OFFLINE_SECONDS = 30.0  # after a log call failed for good, later ones go straight to the pending file this long
PENDING_DIR = "pending"  # under mlruns/: <run id>.jsonl (and <run id>/ for copies) the store did not take yet
HTTP_RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"  # MLflow's retries inside each call: 7, minutes in all
SOURCE_TAGS = {MLFLOW_GIT_COMMIT, MLFLOW_GIT_BRANCH, MLFLOW_GIT_DIRTY, MLFLOW_GIT_REPO_URL}  # a run's git source
LOCK_SECONDS = 300.0  # waiting longer for a store lock means a stuck process: fail with its path
STORE_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")  # MLflow's
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy stores besides SQLite
SQLITE_HEADER = b"SQLite format 3\0"  # the first bytes of every SQLite database file
_log = logging.getLogger(__name__)


def open_store(uri: str) -> None:
    """Point MLflow at store `uri` and fail fast, before any work, if it cannot be reached."""
    scheme = urlparse(uri).scheme
    if scheme.split("+")[0] not in STORE_SCHEMES:  # postgresql+psycopg2: a database with its driver
        raise CdganError(
            f"MLFLOW_TRACKING_URI={uri}: not a store MLflow can open (schemes: {', '.join(STORE_SCHEMES[1:])}); "
            "fix it, or unset MLFLOW_TRACKING_URI to use the local store in mlruns/"
        )
    if scheme in ("http", "https"):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise CdganError(
                f"MLFLOW_TRACKING_URI={uri} is unreachable ({type(err).__name__}); start the server "
                "(mlflow server) or unset MLFLOW_TRACKING_URI to use the local store in mlruns/"
            ) from None
    elif scheme == "sqlite":
        _check_sqlite_file(sqlite_path(uri))
        # MLflow creates a fresh database's tables without a lock: two processes starting on one new file
        # both try, and one fails. Opening both stores (tracking, registry) under the lock creates them once.
        with _cannot_open(uri):
            sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)
            with store_lock(uri, "init"):
                retried(lambda: MlflowClient(uri).search_experiments(max_results=1))
                retried(lambda: MlflowClient(uri).search_registered_models(max_results=1))
    elif scheme.split("+")[0] in DATABASE_SCHEMES:
        with _cannot_open(uri):
            retried(lambda: MlflowClient(uri).search_experiments(max_results=1))
    mlflow.set_tracking_uri(uri)


@contextmanager
def _cannot_open(uri: str) -> Iterator[None]:
    """A database store that cannot be opened (no such folder, no driver, no server) as one line naming it."""
    try:
        yield
    except (OSError, ImportError, SQLAlchemyError, MlflowException) as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        shown = uri.replace(f":{urlparse(uri).password}@", ":***@") if urlparse(uri).password else uri
        raise CdganError(
            f"cannot open the MLflow store {shown} ({type(err).__name__}: {reason}); check the path, the database "
            "server and its Python driver, or unset MLFLOW_TRACKING_URI to use the local store in mlruns/"
        ) from None


def _check_sqlite_file(path: Path) -> None:
    """A store file that exists must be an SQLite database: anything else is named, with the fix, before MLflow
    opens it (and fails with SQLAlchemy's traceback)."""
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise CdganError(
                    f"{path}: not an SQLite database, so not an MLflow store; move it aside (the next run "
                    "creates a fresh store there) or point MLFLOW_TRACKING_URI at the store you meant"
                )


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///"))


@contextmanager
def store_lock(uri: str, key: str) -> Iterator[None]:
    """An exclusive OS file lock named `key`, shared by every process on this machine that uses store `uri`.

    MLflow has no lock of its own for what takes several store calls (creating the tables, moving an alias).
    For a SQLite store the lock file sits beside the database (.cdgan-locks/), so every process that opens
    that file shares it, however its URI spells the path; for other stores it sits in the temp directory
    under a hash of the URI, so it serialises the processes on this machine that use that exact URI. It is
    an flock: the kernel drops it when its process dies, so a crash never leaves the store locked (it does
    not hold across machines, nor reliably on network file systems).
    """
    is_sqlite = urlparse(uri).scheme == "sqlite"
    folder = sqlite_path(uri).parent / ".cdgan-locks" if is_sqlite else None
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only folder: this process cannot write the store there either, any lock will do
            folder = None
    if folder is None:
        key_uri = str(sqlite_path(uri).resolve()) if is_sqlite else uri
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

    MLflow retries only HTTP calls, not a locked SQLite file, and gives up on a server that is down for
    longer than its backoff. At least once: use it for calls whose repetition is harmless (a SQLite error
    rolls the call back; a server that took a request but did not answer may see it twice).
    """
    for delay in (*(RETRY_DELAYS if delays is None else delays), None):  # None: the last try
        try:
            with _signals_after_the_call():
                return call()
        except Exception as err:
            if delay is None or not is_transient(err):
                raise
            _log.info("MLflow store call failed (%s); trying again in %.0fs", err, delay)
            time.sleep(delay)


@contextmanager
def _signals_after_the_call() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a SQLite store call takes effect when the call returns: an exception raised
    inside a write leaves its connection holding the database lock, and every later call of this process,
    the run's end included, then waits on "database is locked" (MLflow does not guard its writes so). HTTP
    stores keep the signal at once (a call may retry for minutes), and so do threads other than the main
    one, which cannot set signal handlers. Only Python handlers are deferred: a signal left to the OS
    (SIG_DFL, SIG_IGN) does what it always does."""
    handlers = {}
    if mlflow.get_tracking_uri().startswith("sqlite:") and threading.current_thread() is threading.main_thread():
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        handlers = {signum: handler for signum, handler in handlers.items() if callable(handler)}
    caught: list[int] = []
    for signum in handlers:
        signal.signal(signum, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):  # each signal once, in the order they came
            handlers[signum](signum, None)  # raises KeyboardInterrupt, Terminated, ...


@dataclass
class _Pending:
    """What the open run could not log yet, one JSON line per call, in order, until sent: metrics (step, time,
    values), artifacts, images and models (a copy under <run id>/) and the run's end (status, time)."""

    path: Path  # mlruns/pending/<run id>.jsonl
    retry_at: float = 0.0  # time.monotonic() before which log calls skip the store

    @property
    def files(self) -> Path:
        return self.path.with_suffix("")  # mlruns/pending/<run id>/: copies of what is not yet logged

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
class OpenRun:
    """Delivery for the run `open_run` holds: metrics, images and models go to the store from one thread of their
    own, in order, so a log call never waits on the store; what the store cannot take goes to `pending`.

    Not MLflow's asynchronous logging (`synchronous=False`): it costs the training thread ~40 times the CPU
    per call and stores no sooner (benchmarks/costs.py, logging_async), and neither retries nor keeps what fails.
    """

    run_id: str
    pending: _Pending
    client: MlflowClient = field(default_factory=MlflowClient)  # explicit run ids: MLflow's active run is per thread
    sender: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdgan-metrics")
    )
    refused: Exception | None = None  # the first metric the store refused as a bad request

    def log_metrics(self, step: int | None, timestamp: int, values: dict[str, float]) -> None:
        """Queue the values for the sender thread; raise what the store refused of earlier ones."""
        self.raise_refused()
        self.sender.submit(self._send_or_keep, {"kind": "metrics", "step": step, "timestamp": timestamp,
                                                "values": values})  # fmt: skip

    def log_image(self, step: int, timestamp: int, key: str, image: np.ndarray) -> None:
        """Queue an (H, W, C) uint8 image for the sender thread: one frame of the UI's image slider `key`."""
        self.raise_refused()
        self.sender.submit(
            self._send_or_keep, {"kind": "image", "step": step, "timestamp": timestamp, "key": key}, image
        )

    def log_model(self, step: int, name: str, model: Any, signature: ModelSignature) -> None:
        """Queue a torch module for the sender thread, to become a LoggedModel of the run at `step` (`_log_model`);
        the module must not change afterwards (pass a copy)."""
        self.raise_refused()
        self.sender.submit(self._send_or_keep, {"kind": "model", "step": step, "name": name}, (model, signature))

    def wait(self) -> None:
        """Return once what was queued (metrics, images, models) reached the store or the pending file."""
        self.sender.submit(lambda: None).result()  # one sender thread: its queue is done when this is

    def log_artifact(self, path: Path, folder: str | None) -> None:
        """Log a file; a store that cannot take it gets a copy later (kept under mlruns/pending/<run id>/, so
        later edits of `path` do not change it)."""
        if not _logged(lambda: mlflow.log_artifact(str(path), artifact_path=folder), f"artifact {path}", self.pending):
            copy = self._pending_folder() / path.name
            shutil.copy2(path, copy)
            self.pending.append({"kind": "artifact", "path": str(copy), "folder": folder})

    def _send_or_keep(self, row: dict[str, Any], payload: Any = None) -> None:
        """In the sender thread: send `row` with its in-memory `payload` (`_send`); if the store cannot take it,
        the row goes to the pending file, with the path of a copy of its payload."""
        try:
            what = f"{row['kind']} at step {row['step']}"
            if not _logged(lambda: _send(self.client, self.run_id, row, payload), what, self.pending):
                if payload is not None:
                    row = row | {"path": str(_keep(payload, self._pending_folder()))}
                self.pending.append(row)
        except Exception as err:  # not transient: a bad name or value, the caller's bug
            self.refused = self.refused or err

    def _pending_folder(self) -> Path:
        """A new folder under mlruns/pending/<run id>/, one per kept copy: names may repeat."""
        self.pending.files.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.pending.files))

    def raise_refused(self) -> None:
        if self.refused is not None:
            raise self.refused


@contextmanager
def open_run(mlruns: Path, run_id: str) -> Iterator[OpenRun]:
    """The active run's sender and pending file for the block, both emptied when it ends; then the run ends,
    never left RUNNING: FINISHED, KILLED on SIGTERM (Terminated), FAILED on an error or Ctrl-C.

    What the store cannot take waits in mlruns/pending/<run id>.jsonl, and so does the end (with its time) if
    the store is still down after END_RETRY_DELAYS; it is sent at the end of the block if the store is back,
    else by `flush_closed` when the next run in this project starts."""
    run = OpenRun(run_id, _Pending(mlruns / PENDING_DIR / f"{run_id}.jsonl"))
    try:
        try:
            yield run
        finally:  # also after an error: what was measured still reaches the (FAILED) run
            run.sender.shutdown(wait=True)  # queued metrics reach the store or the pending file first
            _flush(run.pending, run_id)
        run.raise_refused()
    except BaseException as err:
        _end_run(run_id, "KILLED" if _is_terminated(err) else "FAILED", run.pending)
        raise
    _end_run(run_id, "FINISHED", run.pending)


def _is_terminated(err: BaseException | None) -> bool:
    """SIGTERM unwound the block, also when cleanup then raised (a write to the closed pipe of a dead dvc)."""
    while err is not None:
        if isinstance(err, Terminated):
            return True
        err = err.__context__
    return False


def _end_run(run_id: str, status: str, pending: _Pending) -> None:
    """End the active run; a store that stays down through END_RETRY_DELAYS gets the end later, from the
    pending file, with this end time (the retries only delay the close; the stage itself succeeds)."""
    end_time = int(time.time() * 1000)

    def end() -> None:
        active = mlflow.active_run()
        # MLflow prints the run's link before it tells the store: on the closed pipe of a dead `dvc repro`
        # (a cancelled Prefect flow run) that write failed the end and left the run RUNNING
        printed = io.StringIO()
        with redirect_stdout(printed):
            if active is not None and active.info.run_id == run_id:
                with _without_http_retries():  # a dead server fails this first try at once; the backoff is ours
                    mlflow.end_run(status)  # takes the run off this process's stack first, then tells the store
            else:  # a retry: the run is off the stack already
                _check_reachable()
                MlflowClient().set_terminated(run_id, status, end_time)
        with suppress(OSError):
            sys.stdout.write(printed.getvalue())

    try:
        retried(end, END_RETRY_DELAYS)
    except Exception as err:
        if not is_transient(err):
            raise
        pending.append({"kind": "end", "status": status, "end_time": end_time})
        _log.warning("MLflow did not take the end (%s) of run %s (%s); kept in %s", status, run_id, err, pending.path)


@contextmanager
def _without_http_retries() -> Iterator[None]:
    """MLflow's HTTP retries off for the block (it reads MLFLOW_HTTP_REQUEST_MAX_RETRIES at each call and has no
    per-call setting): `mlflow.end_run`, the one way to take the run off MLflow's stack, calls the store."""
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


def _logged(call: Callable[[], Any], what: str, pending: _Pending) -> bool:
    """Run a log call: True if the store took it, False if it belongs in the open run's `pending` file."""
    if time.monotonic() < pending.retry_at:
        return False
    try:
        retried(call)
        return True
    except Exception as err:
        if not is_transient(err):
            raise
        pending.retry_at = time.monotonic() + OFFLINE_SECONDS
        _log.warning("MLflow did not take %s (%s); kept in %s", what, err, pending.path)
        return False


def _send(client: MlflowClient, run_id: str, row: dict[str, Any], payload: Any = None) -> None:
    """Log one row of the open run or of its pending file. `payload`: an image row's (H, W, C) array, a model
    row's (module, signature), while still in memory; from the pending file, the copy at row["path"]."""
    kind = row.get("kind", "metrics")  # lines written before kinds existed hold metrics
    if kind == "metrics":
        batch = [Metric(key, value, row["timestamp"], row["step"] or 0) for key, value in row["values"].items()]
        client.log_batch(run_id, metrics=batch)
    elif kind == "artifact":
        client.log_artifact(run_id, row["path"], row["folder"])
    elif kind == "image":
        image = payload if payload is not None else mlflow.Image(row["path"])
        client.log_image(run_id, image, key=row["key"], step=row["step"], timestamp=row["timestamp"], synchronous=True)
    elif kind == "model":
        if payload is None:
            from mlflow import pytorch

            payload = (pytorch.load_model(row["path"]), Model.load(row["path"]).signature)
        _log_model(client, run_id, row["name"], row["step"], *payload)
    else:
        client.set_terminated(run_id, row["status"], row["end_time"])


def _log_model(client: MlflowClient, run_id: str, name: str, step: int, model: Any, signature: ModelSignature) -> None:
    """Torch module `model` as a LoggedModel `name` of run `run_id` at `step`, saved as `_saved_as` says: MLflow
    links the run's metrics of that step to it (send them first); it takes the run's params and git source tags.

    The model is created here, not by `mlflow.pytorch.log_model` alone: in a thread without the active run
    that would file it under the process's active experiment and tag it with the entry script's commit.
    Retried as a whole, so a store that fails half-way can leave an extra model in state PENDING or FAILED.
    """
    from mlflow import pytorch  # seconds of imports, paid only by runs that log a model

    run = client.get_run(run_id)
    tags = {key: value for key, value in run.data.tags.items() if key in SOURCE_TAGS}
    logged = client.create_logged_model(run.info.experiment_id, name, run_id, tags, run.data.params)
    with _quiet_pickle_warning():
        pytorch.log_model(
            model, name=name, step=step, model_id=logged.model_id, **_saved_as(signature),
            run_id=run_id,  # passed on to mlflow.models.Model.log: this thread has no active run
        )  # fmt: skip


def _saved_as(signature: ModelSignature) -> dict[str, Any]:
    """How a model is saved: pickled, not torch.export's graph (pt2), whose tracing in the sender thread changes
    the numbers of the training running beside it; with requirements given, as inferring them loads the model."""
    from mlflow import pytorch

    return {"serialization_format": "pickle", "signature": signature,
            "pip_requirements": pytorch.get_default_pip_requirements()}  # fmt: skip


@contextmanager
def _quiet_pickle_warning() -> Iterator[None]:
    """Without MLflow's warning, on every pickled save, that loading a pickle runs its code and that pt2 avoids
    that: pt2 is ruled out (`_saved_as`), and the modules cdgan logs are torch's own (stages.train)."""
    logger = logging.getLogger("mlflow.pytorch")

    def quiet(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Saving pytorch model by Pickle")

    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _keep(payload: Any, folder: Path) -> Path:
    """A copy of an image or (module, signature) payload in `folder`, which `_send` reads back."""
    if isinstance(payload, np.ndarray):
        mlflow.Image(payload).save(str(folder / "image.png"))
        return folder / "image.png"
    from mlflow import pytorch

    model, signature = payload
    with _quiet_pickle_warning():
        pytorch.save_model(model, str(folder / "model"), **_saved_as(signature))
    return folder / "model"


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


def flush_closed(mlruns: Path) -> None:
    """Send what runs that ended while the store was down left in mlruns/pending/.

    Only files whose run has ended (an `end` line): a file without one belongs to a run that is open in a
    process now, or that died, and goes out when a stage continues that run. A run this store does not
    know (MLFLOW_TRACKING_URI changed since) keeps its file for the store that holds it.
    """
    folder = mlruns / PENDING_DIR
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
