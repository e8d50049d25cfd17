"""MLflow runs: where the store is, one run per pipeline execution, params, metrics, pictures, lineage tags."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import requests
from mlflow.tracking import MlflowClient

from cdgan.errors import CdganError
from cdgan.params import Params, Paths

DEFAULT_DB = "mlflow.db"


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
    tags = {}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
        tags["git_commit"] = commit.stdout.strip()
        tags["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.CalledProcessError):
        tags["git_commit"] = "unknown"
    lock = root / "dvc.lock"
    if lock.exists():
        tags["dvc_lock_sha256"] = hashlib.sha256(lock.read_bytes()).hexdigest()
    return tags


@contextmanager
def tracked_run(params: Params, paths: Paths, run_id: str | None = None) -> Iterator[str]:
    """Open the pipeline's run (new, or `run_id` to continue it); on any error it ends FAILED."""
    uri = connect(paths)
    if run_id is None:
        experiment_id = _experiment_id(f"cdgan-{params.data.dataset}", uri)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=f"{params.train.loss}-k{params.train.cd_k}")
        mlflow.log_params(flat_params(params))
    else:
        run = mlflow.start_run(run_id=run_id)
    mlflow.set_tags(lineage_tags(paths.root))
    try:
        yield run.info.run_id
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run()


def log_metrics(step: int | None, values: dict[str, float]) -> None:
    mlflow.log_metrics(values, step=step)


def log_artifact(path: Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), artifact_path=folder)
