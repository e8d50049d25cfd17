"""Prefect flow `cdgan-tune`: an Optuna study (TPE, median pruning) over a YAML search space, each trial a full
`dvc repro evaluate` in its own workspace and a child MLflow run; the best params become a preset."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import optuna
import psutil
from mlflow.tracking import MlflowClient
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from cdgan import tracking
from cdgan.files import read_json
from cdgan.params import Paths
from cdgan.ranking import Objective, objective_for
from pipelines import flows, studies
from pipelines.overrides import trial_name, with_overrides

PARALLEL = flows.MAX_PARALLEL  # trials in flight at once; the cores are split between them
POLL_SECONDS = 3.0  # between reads of a running trial's score history in MLflow (and study bookkeeping)
STOP_SECONDS = 30.0  # a pruned trial's `dvc repro` gets SIGINT (its MLflow run ends FAILED), then SIGKILL
TRIAL_TAG = "cdgan.tune_trial"  # on the trial's MLflow run: its Optuna trial number
STATE_TAG = "cdgan.tune_state"  # on a pruned trial's MLflow run: PRUNED


def score_history(
    client: MlflowClient, experiment_id: str, parent_id: str, number: int, objective: Objective
) -> Callable[[], list[tuple[int, float]]]:
    """A reader of the trial's logged score history in its child MLflow run: [(step, objective score), ...] of
    the `train/<key>` histories of the objective's keys, at the steps where all of them are logged."""

    def read() -> list[tuple[int, float]]:
        runs = client.search_runs([experiment_id], _trial_query(parent_id, number), max_results=1)
        if not runs:  # the train stage has not opened its run yet
            return []
        steps: dict[int, dict[str, float]] = {}
        for key in objective.keys:
            for m in client.get_metric_history(runs[0].info.run_id, f"train/{key}"):
                steps.setdefault(m.step, {})[key] = m.value
        return sorted((step, objective.score(v)) for step, v in steps.items() if len(v) == len(objective.keys))

    return read


def _trial_query(parent_id: str, number: int) -> str:
    return f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{TRIAL_TAG}` = '{number}'"


def _mark_pruned(client: MlflowClient, experiment_id: str, parent_id: str, number: int) -> None:
    """Tag the pruned trial's MLflow run; its stage ends it FAILED on SIGINT, this ends it KILLED if it could not."""
    for run in client.search_runs([experiment_id], _trial_query(parent_id, number), max_results=1):
        client.set_tag(run.info.run_id, STATE_TAG, TrialState.PRUNED.name)
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def watch(proc: subprocess.Popen, trial: optuna.Trial, history: Callable[[], list[tuple[int, float]]]) -> bool:
    """Report each new (step, value) of `history` to the trial while `proc` runs; once the pruner says so,
    stop `proc`'s process group and return True. A process that ended on its own returns False (its last
    scores are still reported, for the pruner's view of later trials)."""
    last_step = -1
    while True:
        has_ended = proc.poll() is not None
        for step, value in history():
            if step <= last_step or not math.isfinite(value):
                continue
            trial.report(value, step)
            last_step = step
            if not has_ended and trial.should_prune():
                _stop(proc)
                return True
        if has_ended:
            return False
        time.sleep(POLL_SECONDS)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to `proc` and every process under it (the stage's Python ends its MLflow run as FAILED), then
    SIGKILL to what is left after STOP_SECONDS (SIGINT is ignored where the flow runs as a background job)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # ended meanwhile
        family = []
    for member in family:
        with suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(family[1:], timeout=STOP_SECONDS)
    for member in alive:
        with suppress(psutil.NoSuchProcess):
            member.kill()
    try:
        proc.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@task(cache_policy=NO_CACHE)  # a trial is asked once and run once: nothing to hash or cache
def tune_trial(
    project: Path,
    workspace: Path,
    raw: dict[str, Any],
    env: dict[str, str],
    study: studies.StudyRef,
    number: int,
    objective: Objective,
) -> FrozenTrial:
    """One trial as `flows.run_trial` runs a sweep trial: a fresh workspace reproduced up to evaluate, here
    in a process that is stopped as soon as the pruner says so. Tells the study the `objective` score of its
    metrics/eval.json (or PRUNED) and returns the finished trial; a failed pipeline raises and leaves the
    telling to the flow.

    The trial is found by its `number` in the `study`'s storage, opened here: on a Dask worker too, so the
    storage must be reachable from the workers (a journal file on the shared filesystem, or a database server).
    `env` holds MLFLOW_TRACKING_URI and the parent run (tracking.PARENT_RUN_ENV) under which the trial's run
    opens; the score history is read from that run.
    """
    logger = get_run_logger()
    trial = studies.load_trial(study, number)
    flows.make_workspace(project, workspace, raw, env)
    tags = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT", "{}")) | flows.worker_tags() | {TRIAL_TAG: str(trial.number)}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # dvc and cdgan of this venv
    tail: deque[str] = deque(maxlen=flows.TAIL_LINES)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent_id = env[tracking.PARENT_RUN_ENV]
    experiment_id = client.get_run(parent_id).info.experiment_id  # trial runs open in their parent's experiment
    history = score_history(client, experiment_id, parent_id, trial.number, objective)
    with subprocess.Popen(
        flows.TRIAL_REPRO,
        cwd=workspace,
        env={**os.environ, **env, "PATH": path, "MLFLOW_RUN_CONTEXT": json.dumps(tags)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:  # in the flow's process group: Ctrl-C on the flow reaches the trials too
        reader = threading.Thread(target=_pump, args=(proc, logger, tail), daemon=True)
        reader.start()
        is_pruned = watch(proc, trial, history)
        reader.join()
    if is_pruned:
        logger.info("trial %d pruned: its %s fell behind the earlier trials'", trial.number, objective.name)
        _mark_pruned(client, experiment_id, parent_id, trial.number)
        return trial.study.tell(trial, state=TrialState.PRUNED)
    if proc.returncode:
        command = " ".join(flows.TRIAL_REPRO)
        raise RuntimeError(f"{command} failed in {workspace} (exit {proc.returncode}):\n{''.join(tail)}")
    metrics = read_json(Paths(workspace).eval_metrics)
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            trial.set_user_attr(key, value)  # every evaluation metric beside the objective, for the summary
    return trial.study.tell(trial, objective.score(metrics))


def _pump(proc: subprocess.Popen, logger: Any, tail: deque[str]) -> None:
    for line in proc.stdout:
        if line.strip():
            logger.info(line.rstrip())
            tail.append(line)


@flow(name="cdgan-tune", task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL))
def cdgan_tune(
    space: str = "presets/tune-digits.yaml",
    trials: int = 20,
    name: str = "digits",
    params_path: str = "params.yaml",
    project_dir: str = ".",
    storage: str | None = None,
    base: dict[str, Any] | None = None,
    cluster: str | None = None,
) -> dict[str, Any]:
    """Grow the Optuna study `name` to `trials` finished (complete or pruned) trials over the search space in
    `space` (a YAML file relative to the project), on top of `params_path` (put on the project's params.yaml, as
    in `pipelines.overrides.resolve_params`) and the dotted `base` overrides.

    The study lives in `storage` (`journal:PATH`, an Optuna journal file, PATH relative to the project; or an RDB
    URL; default sqlite under sweeps/optuna.db: `studies.resolve_storage`), so running the
    flow again with the same name continues it: trials a killed run left RUNNING are marked failed and queued
    again with their params. PARALLEL trials run at a time, each `dvc repro evaluate` in sweeps/<name>/ and
    a child MLflow run of this flow's parent run. A trial's value is its objective score
    (`ranking.objective_for`, which the champion gate and the sweep report rank by too); a median pruner
    stops trials whose score over the training history (`train/fid`; `train/modes` and `train/hq_frac` for
    2-D data) falls behind. Writes presets/tuned-<name>.yaml (an overlay: the keys where the best trial's
    params differ from params.yaml), reports/tune-<name>.md and reports/tune-<name>/*.png, all logged to the
    parent run.

    With `cluster` (a Dask scheduler address, tcp://host:8786) trials run one per Dask worker thread, as
    cdgan-sweep's do: the project, the storage and MLFLOW_TRACKING_URI must be reachable from every worker; on
    several nodes the storage is a journal file or a database server, not SQLite (a warning says so).
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    raw, params, distributions = studies.study_inputs(project, space, trials, params_path, base or {})
    objective = objective_for(params.data.is_image)
    storage = studies.resolve_storage(storage, project)
    paths = Paths(project)
    about = {"study": name, "storage": storage, "space": space, "trials": trials, "cluster": cluster}
    with flows.trial_runner(cluster, "cdgan-tune") as runner:  # an unreachable cluster fails here, first
        if cluster is not None and storage.startswith("sqlite:"):
            logger.warning(
                "study storage %s: SQLite locking is unreliable on a network filesystem; for trials on several "
                "nodes use --storage journal:PATH (a file on the shared filesystem) or a database server URL",
                storage,
            )
        study = studies.open_study(storage, name, params.data, distributions, logger)
        run_name = f"tune-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        with tracking.sweep_run(params, paths, run_name, about) as parent_id:
            tracking.set_tags({"cdgan.tune_study": name})
            env = flows.trial_env(paths, parent_id, cluster)
            # on Dask: a trial per worker thread that the cluster has as the study starts
            slots = PARALLEL if cluster is None else max(1, sum(runner.client.nthreads().values()))
            ref = studies.StudyRef(storage, name, study.pruner)
            failure = _run_trials(study, ref, distributions, trials, project, raw, env, objective, runner, slots)
            best = studies.best_trial(study, failure)
            preset = studies.write_preset(project, name, with_overrides(raw, best.params), study, best, objective.name)
            pictures = studies.write_plots(study, project / "reports" / f"tune-{name}")
            markdown = studies.write_summary(
                project / "reports" / f"tune-{name}.md", study, best, objective.name, storage, preset
            )
            for path in (preset, project / "reports" / f"tune-{name}.md", *pictures):
                tracking.log_artifact(path, "tune")
            tracking.log_metrics(None, {"best_value": best.value, "best_trial": best.number})
    create_markdown_artifact(markdown, key=f"tune-{name}".replace("_", "-"), description=f"cdgan-tune {name}")
    if failure is not None:
        raise failure
    return {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
            "preset": str(preset.relative_to(project)), "states": studies.state_counts(study)}  # fmt: skip


def _run_trials(
    study: optuna.Study,
    ref: studies.StudyRef,
    distributions: dict[str, BaseDistribution],
    trials: int,
    project: Path,
    raw: dict[str, Any],
    env: dict[str, str],
    objective: Objective,
    runner: Any,
    slots: int,
) -> BaseException | None:
    """Ask, run and tell trials, `slots` at a time, until the study has `trials` finished ones (trials running
    elsewhere on the same storage count as on their way). A failed trial is recorded FAIL and stops the study
    once the trials beside it end, as Optuna's `optimize` does; its error is returned."""
    logger = get_run_logger()
    running: dict[int, Any] = {}  # trial number -> Prefect future
    failure: BaseException | None = None
    owner = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        while failure is None and len(running) < slots:
            in_flight = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if studies.count_finished(study) + in_flight >= trials:
                break
            trial = study.ask(distributions)
            trial.set_user_attr(studies.OWNER_ATTR, owner)
            overrides = dict(trial.params)
            logger.info("trial %d: %s", trial.number, trial_name(overrides))
            workspace = project / "sweeps" / study.study_name / f"trial-{trial.number:03d}"
            running[trial.number] = runner.submit(
                tune_trial.with_options(task_run_name=f"trial-{trial.number}"),
                {"project": project, "workspace": workspace, "raw": with_overrides(raw, overrides),
                 "env": env, "study": ref, "number": trial.number, "objective": objective},
            )  # fmt: skip
        if not running:
            return failure
        done, _ = wait(list(running.values()), timeout=POLL_SECONDS)
        for number, future in list(running.items()):
            if future not in done:
                continue
            del running[number]
            result = future.result(raise_on_failure=False)
            if not future.state.is_completed():
                study.tell(number, state=TrialState.FAIL)
                logger.error("trial %d failed; the study stops when the trials beside it end: %s", number, result)
                failure = failure or result
            else:
                logger.info("trial %d: %s %s", number, result.state.name.lower(), result.value)
