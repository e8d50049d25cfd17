"""Prefect flow `cdgan-pipeline`: the four DVC stages as tasks, then the MLflow run as a Prefect artifact."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cdgan.errors import CdganError
from cdgan.files import read_json
from cdgan.params import Paths, load_params
from cdgan.tracking import tracking_uri

STAGES = ("prepare", "train", "evaluate", "register")  # dvc.yaml order; tests/pipelines/test_flows.py compares them
RETRIES = {"register": 2}  # only register reaches a tracking server; training is never retried
TAIL_LINES = 40  # output lines quoted in the error of a failed stage


@task(retry_delay_seconds=10)
def run_dvc_stage(stage: str, project: Path) -> None:
    """`dvc repro --single-item <stage>` in `project`, each output line into the Prefect log; raises on failure."""
    logger = get_run_logger()
    # `dvc` and the `cdgan <stage>` commands in dvc.yaml come from the environment running this flow
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        ["dvc", "repro", "--single-item", stage],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            if line.strip():
                logger.info(line.rstrip())
                tail.append(line)
    if proc.returncode:
        raise RuntimeError(f"dvc repro --single-item {stage} failed (exit {proc.returncode}):\n{''.join(tail)}")


def _summary(run_id: str, uri: str, metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in metrics.items())
    return (
        f"# cdgan run\n\n- MLflow run: `{run_id}`\n- Tracking URI: `{uri}`\n\n| metric | value |\n|---|---|\n{rows}\n"
    )


@flow(name="cdgan-pipeline")
def cdgan_pipeline(params_path: str = "params.yaml", project_dir: str = ".") -> dict[str, float]:
    """Validate params, run the DVC stages in dvc.yaml order, publish the MLflow run; returns the eval metrics.

    `params_path` is relative to `project_dir`; the stages themselves read the project's params.yaml.
    """
    project = Path(project_dir).resolve()
    load_params(project / params_path)  # a CdganError fails the flow here, before any task runs
    for stage in STAGES:
        run_dvc_stage.with_options(name=stage, task_run_name=stage, retries=RETRIES.get(stage, 0))(stage, project)

    paths = Paths(project)
    run_id = read_json(paths.train_metrics)["mlflow_run_id"]
    uri = tracking_uri(paths)
    metrics = {key: value for key, value in read_json(paths.eval_metrics).items() if isinstance(value, int | float)}
    get_run_logger().info("MLflow run %s in %s", run_id, uri)
    create_markdown_artifact(_summary(run_id, uri, metrics), key="cdgan-run", description="MLflow run and metrics")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run cdgan-pipeline: prepare -> train -> evaluate -> register.")
    parser.add_argument("--params", default="params.yaml", help="params file, relative to --project")
    parser.add_argument("--project", default=".", help="project directory holding dvc.yaml")
    args = parser.parse_args()
    try:
        cdgan_pipeline(params_path=args.params, project_dir=args.project)
    except CdganError as err:
        raise SystemExit(f"cdgan-pipeline: error: {err}") from None  # one line, no traceback
