"""What an MLflow run records: one run per pipeline execution (or sweep), its params, metrics (system/* too),
artifacts, images, best models, training data, lineage and git source tags. Getting them into the store, through
outages and signals, is cdgan.store's."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import numpy as np
import psutil
import torch
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY, MLFLOW_GIT_REPO_URL
from torch import nn

from cdgan import store
from cdgan.devices import compute_tags
from cdgan.files import sha256_file
from cdgan.params import Params, Paths
from cdgan.store import retried

DEFAULT_DB = "mlflow.db"
LOCAL_UI = "http://127.0.0.1:5000"  # `make serve` / `mlflow ui` default
PARENT_RUN_ENV = "CDGAN_PARENT_RUN_ID"  # set by the sweep flow: trial runs nest under the sweep's run
PIPELINE_OUTPUTS = ("dvc.lock", "metrics", "plots", "**/.gitignore")  # written by `dvc repro` itself
EXPERIMENT_TAGS = {"dvc_exp_name": "DVC_EXP_NAME", "dvc_exp_baseline_rev": "DVC_EXP_BASELINE_REV"}  # set by dvc exp run
DATASET_DIGEST_CHARS = 16  # MLflow keeps at most 36 characters of a dataset digest
_log = logging.getLogger(__name__)


def tracking_uri(paths: Paths) -> str:
    """An existing MLFLOW_TRACKING_URI wins; otherwise the embedded SQLite store in mlruns/."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(paths.mlruns / DEFAULT_DB).resolve()}"


def connect(paths: Paths) -> str:
    """Point MLflow at the project's store and fail fast, before any work, if it cannot be reached."""
    uri = tracking_uri(paths)
    store.open_store(uri)
    return uri


def experiment_name(params: Params) -> str:
    return f"cdgan-{params.data.dataset}"  # one experiment per data set: its runs compare like with like


def _experiment_id(name: str, uri: str) -> str:
    client = MlflowClient()
    experiment = retried(lambda: client.get_experiment_by_name(name))
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if urlparse(uri).scheme == "sqlite":  # keep artifacts beside the database, not in the working directory
        artifact_location = (store.sqlite_path(uri).parent / "artifacts").resolve().as_uri()
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
    commit = _git(root, "rev-parse", "HEAD")
    tags = {"git_commit": commit or "unknown"}
    status = ["status", "--porcelain", "--", ".", *(f":(exclude,glob){out}" for out in PIPELINE_OUTPUTS)]
    changes = _git(root, *status) if commit is not None else None
    if changes is not None:
        tags["git_dirty"] = str(bool(changes)).lower()
    lock = root / "dvc.lock"
    if lock.exists():
        tags["dvc_lock_sha256"] = sha256_file(lock)
    for tag, env in EXPERIMENT_TAGS.items():  # `dvc exp apply <dvc_exp_name>` brings that experiment back
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def run_tags(root: Path) -> dict[str, str]:
    """`lineage_tags` and the source tags the MLflow UI shows on a run's page: mlflow.source.git.commit and
    mlflow.source.git.dirty, always git_commit's and git_dirty's values, and mlflow.source.git.branch and
    mlflow.source.git.repoURL (the `origin` remote, without credentials) where git knows them.

    MLflow sets mlflow.source.git.commit itself when a run starts, from the repository of the entry script (the
    installed `cdgan`, not the project at `root`), and never again; each stage that opens the run sets both
    anew, so a later stage at a later commit (evaluate, register) moves them together.
    """
    tags = lineage_tags(root)
    tags[MLFLOW_GIT_COMMIT] = tags["git_commit"]
    if "git_dirty" not in tags:  # not a git checkout
        return tags
    tags[MLFLOW_GIT_DIRTY] = tags["git_dirty"]
    branch = _git(root, "symbolic-ref", "--short", "-q", "HEAD")  # fails on a detached HEAD: no branch
    remote = _git(root, "remote", "get-url", "origin")
    if branch:
        tags[MLFLOW_GIT_BRANCH] = branch
    if remote:
        url = urlparse(remote)
        if url.scheme in ("http", "https") and "@" in url.netloc:  # https://user:token@host/...: keep the token out
            remote = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
        tags[MLFLOW_GIT_REPO_URL] = remote
    return tags


def _git(root: Path, *args: str) -> str | None:
    """git's output in `root`, stripped; None where git fails (no repository, no git, a ref that is not there)."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_link(paths: Paths, run_id: str) -> str:
    """The run's page in the MLflow UI: the tracking server itself, or the local UI `make serve` starts."""
    uri = tracking_uri(paths)
    base = uri.rstrip("/") if urlparse(uri).scheme in ("http", "https") else LOCAL_UI
    experiment_id = MlflowClient(uri).get_run(run_id).info.experiment_id
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def training_dataset(path: Path, name: str) -> MetaDataset:
    """The prepared data as an MLflow dataset: its file, and as digest the first DATASET_DIGEST_CHARS hex digits
    of the file's sha256 (the whole hash is the data_sha256 tag of a registered version)."""
    digest = sha256_file(path)[:DATASET_DIGEST_CHARS]
    with warnings.catch_warnings():
        # MLflow 3 registers its local-file source class twice, so every file:// URI "can be interpreted in multiple
        # ways" (two classes of the same name and behaviour): a UserWarning in each training log that says nothing
        warnings.filterwarnings(
            "ignore", "The specified dataset source can be interpreted in multiple ways", UserWarning
        )
        source = resolve_dataset_source(path.resolve().as_uri())
    return MetaDataset(source, name=name, digest=digest)


_open: ContextVar[store.OpenRun | None] = ContextVar("cdgan_open_run", default=None)  # the run of the block


@contextmanager
def _opened(paths: Paths, run_id: str) -> Iterator[None]:
    """The run's delivery (store.open_run) for the block, where the log calls below find it."""
    with store.open_run(paths.mlruns, run_id) as run:
        token = _open.set(run)
        try:
            yield
        finally:
            _open.reset(token)


@contextmanager
def sweep_run(params: Params, paths: Paths, name: str, sweep_params: dict[str, Any]) -> Iterator[str]:
    """The parent run of a sweep, in the data set's experiment; trials nest under it through PARENT_RUN_ENV."""
    uri = connect(paths)
    store.flush_closed(paths.mlruns)
    experiment_id = _experiment_id(experiment_name(params), uri)
    run = retried(lambda: mlflow.start_run(experiment_id=experiment_id, run_name=name))
    with _opened(paths, run.info.run_id):
        retried(lambda: mlflow.log_params({f"sweep.{key}": value for key, value in sweep_params.items()}))
        _tag_run(run.info.run_id, run_tags(paths.root) | {"cdgan.kind": "sweep"})
        yield run.info.run_id


@contextmanager
def tracked_run(params: Params, paths: Paths, run_id: str | None = None) -> Iterator[str]:
    """Open the pipeline's run (new, or `run_id` to continue it); it ends FINISHED, FAILED on an error or
    Ctrl-C, KILLED on SIGTERM.

    A new run logs params.yaml's values and the prepared data as its training dataset input.

    Every store call is tried again on transient errors (store.RETRY_DELAYS). Inside the block, metrics and
    artifacts the store cannot take wait in mlruns/pending/ (see `log_metrics`), and so does the run's end if
    the store is still down after store.END_RETRY_DELAYS: logging and ending the run never fail the block
    because the store went away. What a run left there is sent at its close if the store is back, else by
    the next `tracked_run` in this project, before it starts.
    """
    uri = connect(paths)
    store.flush_closed(paths.mlruns)
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
    with _opened(paths, run_id):
        if is_new:
            retried(lambda: mlflow.log_params(flat_params(params)))
            if paths.dataset.exists():  # the run's training data, in the UI's dataset column
                dataset = training_dataset(paths.dataset, params.data.dataset)
                retried(lambda: mlflow.log_input(dataset, context="training"))
        _tag_run(run_id, run_tags(paths.root) | compute_tags())
        yield run_id


def _tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Set `tags` on the active run and delete the git source tags (store.SOURCE_TAGS) it lacks: MLflow's own,
    of the entry script's repository, would otherwise stand beside the project's commit."""
    retried(lambda: mlflow.set_tags(tags))
    client = MlflowClient()
    held = retried(lambda: client.get_run(run_id)).data.tags
    for key in (store.SOURCE_TAGS & held.keys()) - tags.keys():
        retried(lambda key=key: client.delete_tag(run_id, key))


def set_tags(tags: dict[str, str]) -> None:
    retried(lambda: mlflow.set_tags(tags))


def log_metrics(step: int | None, values: dict[str, float]) -> None:
    """Log to the active run. Inside `tracked_run` the call only queues the values for the run's sender thread
    (no wait on the store), and a metric the store cannot take never fails the run; one it refuses as a bad
    request (a bad name or value) raises at the next log call or at the end of the block.

    Transient errors (HTTP 5xx or 429, connection errors, a locked SQLite file) are tried again after
    store.RETRY_DELAYS; if the store still fails, the values go to mlruns/pending/<run id>.jsonl with their
    step and time, later calls skip the store for store.OFFLINE_SECONDS, and the end of `tracked_run` logs
    the file and deletes it (if the store is still down then, the next `tracked_run` in this project does).
    MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES, minutes by default) run inside each try:
    lower them to fall back sooner. Delivery is at least once: a request the server took but did not answer
    in time may be logged twice.
    """
    timestamp = int(time.time() * 1000)  # the time of the call, whenever the values reach the store
    floats = {key: float(value) for key, value in values.items()}  # numpy scalars are not JSON
    run = _open.get()
    if run is None:
        retried(lambda: mlflow.log_metrics(floats, step=step, timestamp=timestamp))
    else:
        run.log_metrics(step, timestamp, floats)


def wait_for_metrics() -> None:
    """Return once the open run's queued metrics reached the store or its pending file."""
    run = _open.get()
    if run is not None:
        run.wait()


def log_image(step: int, key: str, image: np.ndarray) -> None:
    """Log an (H, W, C) uint8 image into the open run at `step`: one frame of the MLflow UI's image slider `key`
    (the run's Images tab). Queued for the run's sender thread and kept in its outbox, as `log_metrics`."""
    _the_open_run().log_image(step, int(time.time() * 1000), key, image)


def log_model(
    step: int, name: str, model: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
) -> None:
    """Log torch module `model` into the open run as an MLflow LoggedModel `name` at `step`, with the metrics
    logged at that step before this call (the model's page shows them; `mlflow.search_logged_models` ranks by
    them) and the run's params. Its signature: float32 tensors (-1, *input_shape) -> (-1, *output_shape).

    Queued for the run's sender thread and kept in its outbox, as `log_metrics`: pass a copy that nothing
    changes afterwards. It is pickled (store._saved_as): loading it needs the classes of its modules.
    """
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output_shape))]),
    )
    _the_open_run().log_model(step, name, model, signature)


def _the_open_run() -> store.OpenRun:
    run = _open.get()
    if run is None:
        raise RuntimeError("log_image and log_model log into the run of a `tracked_run` block; none is open")
    return run


def system_monitor(device: torch.device) -> Callable[[], dict[str, float]]:
    """A reader of system/* metrics, to log with each log step: the machine's CPU and memory use (cpu_percent,
    memory_percent) and this process's (process_cpu_percent, 100 per busy core; process_memory_mib); on a CUDA
    `device`, its utilisation and memory in use by all processes as NVML reports them (gpu_utilization_percent,
    gpu_memory_mib, gpu_memory_percent) when nvidia-ml-py is installed (`pip install 'cdgan[gpu]'`). CPU figures
    are averages since the previous read.

    cdgan's own rather than MLflow's monitor thread (`log_system_metrics`), whose store calls would bypass
    the run's sender, outbox and Ctrl-C handling.
    """
    process = psutil.Process()
    process.cpu_percent()  # the first call of each starts its interval (and returns 0)
    psutil.cpu_percent()
    has_nvml = device.type == "cuda" and importlib.util.find_spec("pynvml") is not None
    if device.type == "cuda" and not has_nvml:
        _log.warning("no system/gpu_* metrics: they need nvidia-ml-py (pip install 'cdgan[gpu]')")
    total = torch.cuda.get_device_properties(device).total_memory if has_nvml else 0

    def read() -> dict[str, float]:
        values = {
            "system/cpu_percent": psutil.cpu_percent(),
            "system/memory_percent": psutil.virtual_memory().percent,
            "system/process_cpu_percent": process.cpu_percent(),
            "system/process_memory_mib": process.memory_info().rss / 2**20,
        }
        if has_nvml:  # NVML queries: no sync with the GPU's work
            used = torch.cuda.device_memory_used(device)
            values["system/gpu_utilization_percent"] = torch.cuda.utilization(device)
            values["system/gpu_memory_mib"] = used / 2**20
            values["system/gpu_memory_percent"] = 100 * used / total
        return values

    return read


def log_artifact(path: Path, folder: str | None = None) -> None:
    """Log a file into the active run; inside `tracked_run`, as `log_metrics` does, a store that cannot take
    it gets a copy later, as the file was when logged."""
    run = _open.get()
    if run is None:
        retried(lambda: mlflow.log_artifact(str(path), artifact_path=folder))
    else:
        run.log_artifact(path, folder)
