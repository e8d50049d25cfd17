"""Prefect flows: `cdgan-pipeline` (the four DVC stages as tasks) and `cdgan-sweep` (a grid of trials,
each a full `dvc repro` in its own workspace, on local threads or a Dask cluster, then one comparison report).
Their console scripts are in pipelines.cli."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from cdgan import tracking
from cdgan.errors import CdganError
from cdgan.files import read_json, write_atomic
from cdgan.params import Params, Paths
from cdgan.ranking import Objective, objective_for
from cdgan.report import read_scores, summarize, to_markdown, write_csv
from pipelines.overrides import (
    expand_grid,
    resolve_params,
    sweep_params,
    trial_name,
    with_overrides,
    write_project_params,
)

# dvc.yaml order; tests/pipelines/test_flows.py compares them
STAGES = ("prepare", "reference", "train", "evaluate", "register")
RETRIES = {"register": 2}  # only register reaches a tracking server; training is never retried
TAIL_LINES = 40  # output lines quoted in the error of a failed stage
TRIAL_FILES = ("dvc.yaml", ".dvcignore", "src")  # what a sweep trial's workspace copies from the project
# A trial first runs the stages that read only the data and the evaluate settings: DVC's run cache, in the
# project's cache that every workspace shares, restores them where an earlier trial ran them on the same inputs
# (the classifier and the mixture baseline take minutes on MNIST). Then the rest without the run cache: every
# trial trains, as its own MLflow run.
TRIAL_SETUP = ["dvc", "repro", "reference"]
TRIAL_REPRO = ["dvc", "repro", "--no-run-cache", "evaluate"]
SEED_KEYS = {"train.seed", "data.seed", "evaluate.seed"}  # varied to repeat a setting, not to compare settings
MAX_PARALLEL = 2  # concurrent sweep trials; change with cdgan_sweep.with_options(task_runner=...)
CONNECT_SECONDS = 10  # to reach the Dask scheduler of `cdgan_sweep(cluster=...)` before giving up


def _run_streaming(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run `cmd`, each output line into the Prefect log; raise with the output's tail if it fails."""
    logger = get_run_logger()
    # `dvc` and the `python -m cdgan.stages.<stage>` commands in dvc.yaml come from the environment running this flow
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **(env or {}), "PATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            if line.strip():
                logger.info(line.rstrip())
                tail.append(line)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{''.join(tail)}")


@task(retry_delay_seconds=10)
def run_dvc_stage(stage: str, project: Path) -> None:
    """`dvc repro --single-item <stage>`: DVC skips it when up to date and records it in dvc.lock."""
    _run_streaming(["dvc", "repro", "--single-item", stage], project)


def _summary(run_id: str, link: str, uri: str, metrics: dict[str, float]) -> str:
    rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in metrics.items())
    return (
        f"# cdgan run\n\n- MLflow run: [`{run_id}`]({link})\n- Tracking URI: `{uri}`\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n"
    )


def _numeric(values: dict[str, Any]) -> dict[str, float]:
    return {
        key: value for key, value in values.items() if isinstance(value, int | float) and not isinstance(value, bool)
    }


@contextmanager
def pipeline_lock(project: Path) -> Iterator[None]:
    """One cdgan-pipeline at a time in `project`: each writes the one params.yaml and reruns DVC there, so a
    second (a scheduled run beside a manual one) waits until the first has read its results, saying so once."""
    path = project / ".cdgan" / "pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        get_run_logger().info("Waiting for the cdgan-pipeline already running in %s (lock %s)", project, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


@flow(name="cdgan-pipeline")
def cdgan_pipeline(
    params_path: str = "params.yaml", project_dir: str = ".", overrides: dict[str, Any] | None = None
) -> dict[str, float]:
    """Validate params, run the DVC stages in dvc.yaml order, publish the MLflow run; returns the eval metrics.

    `params_path` (relative to `project_dir`: params.yaml, a preset or another params file) goes on top of the
    project's params.yaml, then the dotted `overrides` ({"train.cd_k": 5}); the result is validated first, and a
    CdganError fails the flow before any task runs. The keys that change are written into params.yaml, as
    `dvc exp run -S` does (its other keys and comments stay), so DVC reruns exactly the stages whose params
    changed.
    """
    project = Path(project_dir).resolve()
    with pipeline_lock(project):
        write_project_params(project, params_path, overrides or {})
        for stage in STAGES:
            run_dvc_stage.with_options(name=stage, task_run_name=stage, retries=RETRIES.get(stage, 0))(stage, project)
        paths = Paths(project)
        run_id = read_json(paths.train_metrics)["mlflow_run_id"]
        metrics = _numeric(read_json(paths.eval_metrics))
    uri = tracking.tracking_uri(paths)
    link = tracking.run_link(paths, run_id)
    get_run_logger().info("MLflow run %s in %s: %s", run_id, uri, link)
    create_markdown_artifact(
        _summary(run_id, link, uri, metrics), key="cdgan-run", description="MLflow run and metrics"
    )
    return metrics


def worker_tags() -> dict[str, str]:
    """MLflow tags naming the process that runs this trial: host:pid, and its Dask worker's address on a cluster."""
    tags = {"cdgan.worker": f"{socket.gethostname()}:{os.getpid()}"}
    if "distributed" in sys.modules:  # imported only where a sweep runs on Dask
        from distributed import get_worker

        with suppress(ValueError):  # raised outside a Dask worker
            tags["cdgan.dask_worker"] = get_worker().address
    return tags


def make_workspace(project: Path, workspace: Path, raw: dict[str, Any], env: dict[str, str]) -> None:
    """A fresh trial workspace: the project's pipeline and sources, these params, DVC without git sharing the
    project's cache, and the stages before training reproduced (TRIAL_SETUP) with `env`.

    On a Dask worker `project` and `workspace` are the flow's paths, so they must be on a filesystem that the
    flow and every worker share, mounted at the same path.
    """
    if not (project / "dvc.yaml").is_file():
        raise CdganError(
            f"{project / 'dvc.yaml'} not found on {worker_tags()['cdgan.worker']}: trials run in the flow's project "
            "path, so it must be on a filesystem shared by the flow and every Dask worker, at the same path"
        )
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    for name in TRIAL_FILES:
        source = project / name
        if source.is_dir():
            shutil.copytree(source, workspace / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, workspace / name)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _run_streaming(["dvc", "init", "--no-scm", "-q"], workspace)
    if (project / ".dvc").is_dir():  # the project's cache, and with it DVC's run cache (see TRIAL_SETUP)
        cache = subprocess.run(["dvc", "cache", "dir"], cwd=project, capture_output=True, text=True, check=True)
        _run_streaming(["dvc", "cache", "dir", "--local", cache.stdout.strip()], workspace)
    _run_streaming(TRIAL_SETUP, workspace, env)


@task
def run_trial(project: Path, workspace: Path, raw: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One trial: a fresh workspace with the project's pipeline and these params, reproduced up to evaluate."""
    make_workspace(project, workspace, raw, env)
    # MLflow adds the JSON in MLFLOW_RUN_CONTEXT to the tags of every run it starts: here the trial's own run
    tags = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT", "{}")) | worker_tags()
    _run_streaming(TRIAL_REPRO, workspace, env | {"MLFLOW_RUN_CONTEXT": json.dumps(tags)})
    return read_json(Paths(workspace).eval_metrics)


def trial_env(paths: Paths, parent_id: str, cluster: str | None) -> dict[str, str]:
    """What a trial's stages get: the tracking URI and the parent run their MLflow run opens under, and on local
    threads OMP_NUM_THREADS, the cores split between MAX_PARALLEL trials (on Dask the worker's environment
    decides: its processes get OMP_NUM_THREADS=1)."""
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(paths), tracking.PARENT_RUN_ENV: parent_id}
    if cluster is None:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // MAX_PARALLEL)))
    return env


@contextmanager
def trial_runner(cluster: str | None, flow_name: str) -> Iterator[TaskRunner]:
    """The flow's own thread pool, or a DaskTaskRunner connected to the scheduler at `cluster` (tcp://host:8786).
    Workers import the trial code from the pipelines package of their environment, as they import cdgan.

    Raises CdganError when the dask extra is missing or the scheduler cannot be reached.
    """
    if cluster is None:
        yield FlowRunContext.get().task_runner
        return
    try:
        from distributed.comm.addressing import get_address_host_port, normalize_address
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise CdganError(f"{flow_name} --cluster needs the dask extra: pip install -e '.[dask]'") from None
    how_to = f"start one with `dask scheduler` and workers with `dask worker {cluster}`"
    try:
        host, port = get_address_host_port(normalize_address(cluster))
    except ValueError as err:
        raise CdganError(f"Dask scheduler address {cluster!r}: {err}; expected tcp://HOST:PORT") from None
    try:  # a refused connection fails here at once; Dask's client would keep trying for CONNECT_SECONDS
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise CdganError(f"Dask scheduler {cluster} is unreachable ({err}); {how_to}") from None
    with DaskTaskRunner(address=cluster, client_kwargs={"timeout": CONNECT_SECONDS}) as runner:
        try:
            workers = runner.client.scheduler_info()["workers"]
        except OSError as err:
            raise CdganError(f"Dask scheduler {cluster} is unreachable ({err}); {how_to}") from None
        logger = get_run_logger()
        logger.info("Trials run on the Dask scheduler %s, %d workers now", cluster, len(workers))
        if not workers:
            logger.warning("Dask scheduler %s has no workers yet: trials wait until `dask worker` joins", cluster)
        yield runner


@flow(name="cdgan-sweep", task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL))
def cdgan_sweep(
    grid: dict[str, list[Any]],
    base: dict[str, Any] | None = None,
    project_dir: str = ".",
    name: str = "loss_comparison",
    params_path: str = "params.yaml",
    cluster: str | None = None,
) -> list[dict[str, Any]]:
    """Every combination of `grid` (dotted params.yaml keys -> values) on top of `params_path` (relative to
    the project: params.yaml, a preset or another params file, put on the project's params.yaml as in
    `resolve_params`) and `base`, each trial a nested MLflow run under one sweep run; writes reports/<name>.md
    and .csv.

    Trials run MAX_PARALLEL at a time in this process, or with `cluster` (a Dask scheduler address,
    tcp://host:8786) one per Dask worker thread. Workers must run in the project's environment and see
    `project_dir` at the same path (a shared filesystem); use an MLflow server for MLFLOW_TRACKING_URI.
    """
    project = Path(project_dir).resolve()
    raw = resolve_params(project, params_path, base or {})
    trials = expand_grid(grid)
    params = sweep_params(raw, grid)
    paths = Paths(project)
    sweep_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with (
        trial_runner(cluster, "cdgan-sweep") as runner,
        tracking.sweep_run(params[0], paths, sweep_id, {"grid": grid, "base": base or {}}) as parent_id,
    ):
        env = trial_env(paths, parent_id, cluster)
        workspaces = [project / "sweeps" / sweep_id / trial_name(t) for t in trials]
        futures = [
            runner.submit(
                run_trial.with_options(task_run_name=trial_name(t)),
                {"project": project, "workspace": w, "raw": with_overrides(raw, t), "env": env},
            )
            for t, w in zip(trials, workspaces, strict=True)
        ]
        objective = objective_for(params[0].data.is_image)
        rows = [
            t | _numeric(f.result()) | {"seconds_to_target": seconds_to_target(Paths(w), f.result(), objective)}
            for t, f, w in zip(trials, futures, workspaces, strict=True)
        ]
        for t, workspace in zip(trials, workspaces, strict=True):  # the pictures beside the table
            (project / "reports" / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(
                workspace / "plots" / "eval" / "samples.png", project / "reports" / name / f"{trial_name(t)}.png"
            )
        group_by = [k for k in grid if k not in SEED_KEYS]
        markdown = write_report(project / "reports", name, rows, group_by, params[0], [trial_name(t) for t in trials])
        tracking.log_artifact(project / "reports" / f"{name}.md", "report")
        tracking.log_artifact(project / "reports" / f"{name}.csv", "report")
    create_markdown_artifact(markdown, key=name.replace("_", "-"), description=f"cdgan-sweep {sweep_id}")
    return rows


def seconds_to_target(paths: Paths, evaluation: dict[str, Any], objective: Objective) -> float:
    """Seconds of training until the score history first reaches the objective's target
    (`Objective.target_value`): for images an FID at or below the Gaussian-mixture baseline's (`fid_gmm`), for
    2-D data all but one mode covered (`modes_floor` - 1). The history is raw G(z) every `train.eval_every`
    steps; seconds are steps x the run's mean seconds per step (scoring included). NaN when the run never
    reached it."""
    train = read_json(paths.train_metrics)
    per_step = train["train_seconds"] / train["steps"]
    target, metric = objective.target_value(evaluation), objective.metric
    hits = [r for r in read_scores(paths) if metric in r and objective.reaches(r[metric], target)]
    return int(hits[0]["step"]) * per_step if hits else float("nan")


def write_report(
    out: Path, name: str, rows: list[dict[str, Any]], group_by: list[str], params: Params, trials: list[str]
) -> str:
    """reports/<name>.md, <name>.csv (mean ± std of each metric per setting of `group_by`, and its `rank` by the
    data's objective on the means, 1 the best) and <name>_runs.csv (`rows`, one per run); returns the markdown."""
    # the model's figures, then their reference points (real-data floor, Gaussian-mixture baseline)
    image_metrics = ["fid", "fid_raw", "kid", "recall", "coverage", "modes", "kl"]
    image_metrics += ["fid_floor", "fid_gmm", "kid_floor", "kl_floor"]
    point_metrics = ["modes", "hq_frac", "spread", "mmd", "modes_raw", "spread_raw", "mmd_raw", "mmd_floor"]
    metrics = [*(image_metrics if params.data.is_image else point_metrics), "seconds_to_target"]
    metrics = [m for m in metrics if any(m in row for row in rows)]
    summary = summarize(rows, group_by, metrics)
    objective = objective_for(params.data.is_image)
    means = [{key: row.get(f"{key}_mean", math.nan) for key in objective.keys} for row in summary]
    order = sorted(range(len(summary)), key=lambda i: objective.sort_key(means[i]))
    for rank, i in enumerate(order, 1):
        summary[i]["rank"] = rank
    write_csv(out / f"{name}_runs.csv", rows)
    write_csv(out / f"{name}.csv", summary)
    seeds = sorted({str(row.get("train.seed", params.train.seed)) for row in rows})  # the grid's, or the one seed
    best = summary[order[0]]
    setting = ", ".join(f"`{key}={best[key]}`" for key in group_by) or "the one setting"
    slack = f" {'+' if objective.lower_is_better else '-'} {objective.target_slack:g}" if objective.target_slack else ""
    markdown = (
        f"# {name}\n\nData set `{params.data.dataset}`, {len(rows)} runs, train seeds {', '.join(seeds)}; "
        f"mean ± std over runs sharing the other params. Reference points: `*_floor` (real data scored the same "
        f"way), `fid_gmm` (a Gaussian mixture fitted to the training pixels); `seconds_to_target`: training "
        f"seconds until the {objective.metric} history reaches `{objective.target}`{slack}, NaN if never.\n\n"
        f"Best by {objective.name} ({'lower' if objective.lower_is_better else 'higher'} is better, on the means): "
        f"{setting} ({objective.describe(means[order[0]])}).\n\n"
        + to_markdown(summary, group_by, metrics)
        + "\n## Samples (model output)\n\n"
        + "".join(f"{trial}\n\n![{trial}]({name}/{trial}.png)\n\n" for trial in trials)
    )
    write_atomic(out / f"{name}.md", lambda tmp: tmp.write_text(markdown))
    return markdown
