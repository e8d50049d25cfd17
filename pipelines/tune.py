"""Prefect flow `cdgan-tune`: an Optuna study (TPE, median pruning) over a YAML search space, each trial a full
`dvc repro evaluate` in its own workspace and a child MLflow run; the best params become a preset."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import optuna
import psutil
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.trial import FrozenTrial, TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from cdgan import tracking
from cdgan.errors import CdganError
from cdgan.evaluation import primary_metric
from cdgan.files import read_json, write_atomic
from cdgan.params import Params, Paths, parse_params, read_params_yaml

try:  # pytest and Prefect's entrypoint loader have the project root on sys.path
    from pipelines import flows
except ImportError:  # `python pipelines/tune.py`: only pipelines/ is
    import flows

SPACE_TYPES = ("float", "int", "categorical")
SPACE_FIELDS = {"float": {"low", "high", "log"}, "int": {"low", "high", "log"}, "categorical": {"choices"}}
PARALLEL = flows.MAX_PARALLEL  # trials in flight at once; the cores are split between them
POLL_SECONDS = 3.0  # between reads of a running trial's score history in MLflow (and study bookkeeping)
STOP_SECONDS = 30.0  # a pruned trial's `dvc repro` gets SIGINT (its MLflow run ends FAILED), then SIGKILL
PRUNE_AFTER_TRIALS = 3  # MedianPruner: no pruning until this many trials have finished
OWNER_ATTR = "cdgan.owner"  # host:pid of the flow that asked the trial: a RUNNING trial whose pid is gone was killed
REQUEUED_ATTR = "cdgan.requeued_from"
STUDY_ATTR = "cdgan.study"  # the space and data set a study was created with; a resume must match them
TRIAL_TAG = "cdgan.tune_trial"  # on the trial's MLflow run: its Optuna trial number
STATE_TAG = "cdgan.tune_state"  # on a pruned trial's MLflow run: PRUNED


def default_storage(project: Path) -> str:
    return f"sqlite:///{project / 'sweeps' / 'optuna.db'}"


def read_space(path: Path, raw: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The search space in `path` (dotted params.yaml keys -> {type, low, high, log} or {type, choices}) as
    Optuna distributions. Every problem goes into one CdganError, and the params at both ends of each range
    (and every choice) must pass `parse_params` on top of `raw`: a bad key or bound fails here, before any trial."""
    try:
        spec = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CdganError(f"{path}: search space file not found") from None
    except yaml.YAMLError as err:
        raise CdganError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict) or not spec:
        raise CdganError(
            f"{path}: expected a mapping of dotted params keys to {{type, low, high}} or {{type, choices}}"
        )
    problems: list[str] = []
    space: dict[str, BaseDistribution] = {}
    for key, entry in spec.items():
        try:
            space[key] = _distribution(key, entry)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            continue
        values = (
            space[key].choices if isinstance(space[key], CategoricalDistribution) else (entry["low"], entry["high"])
        )
        for value in values:
            try:
                parse_params(flows._with_overrides(raw, {key: value}), f"{key}={value!r}")
            except CdganError as err:
                problems.append(str(err))
    if problems:
        raise CdganError(f"{path}: " + "; ".join(problems))
    return space


def _distribution(key: Any, entry: Any) -> BaseDistribution:
    """One space entry as an Optuna distribution; ValueError says what is wrong with it."""
    if not isinstance(key, str) or key.count(".") != 1:
        raise ValueError("expected a dotted params.yaml key such as train.lr")
    if key == "data.dataset":
        raise ValueError("a study tunes one data set (one MLflow experiment); set data.dataset in --params")
    if not isinstance(entry, dict):
        raise ValueError("expected {type: float|int, low, high[, log]} or {type: categorical, choices}")
    kind = entry.get("type")
    if kind not in SPACE_TYPES:
        raise ValueError(f"unknown type {kind!r}; expected one of {', '.join(SPACE_TYPES)}")
    extra = set(entry) - SPACE_FIELDS[kind] - {"type"}
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)} for type {kind}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError("categorical needs a non-empty list of choices")
        return CategoricalDistribution(choices)
    number = int if kind == "int" else (int, float)
    low, high, log = entry.get("low"), entry.get("high"), entry.get("log", False)
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, number) or isinstance(value, bool):
            raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'} (got {value!r})")
    if low > high:
        raise ValueError(f"low > high ({low} > {high})")
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false (got {log!r})")
    if log and low <= 0:
        raise ValueError(f"log needs low > 0 (got {low})")
    return IntDistribution(low, high, log=log) if kind == "int" else FloatDistribution(float(low), float(high), log=log)


def objective(metrics: dict[str, Any], is_image: bool) -> float:
    """The value a trial is ranked by: `fid` (lower is better) for images; for 2-D data `modes`, ties broken
    by `hq_frac` (modes + hq_frac / 2: modes is a count, so one more mode always outweighs any hq_frac)."""
    metric, _ = primary_metric(is_image)
    return float(metrics[metric]) if is_image else float(metrics[metric]) + float(metrics["hq_frac"]) / 2


def score_history(
    client: MlflowClient, experiment_id: str, parent_id: str, number: int, key: str
) -> Callable[[], list[tuple[int, float]]]:
    """A reader of the trial's logged score history, [(step, value), ...] of `key` in its child MLflow run."""

    def read() -> list[tuple[int, float]]:
        runs = client.search_runs([experiment_id], _trial_query(parent_id, number), max_results=1)
        if not runs:  # the train stage has not opened its run yet
            return []
        return sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))

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


@task(cache_policy=NO_CACHE)  # the trial holds the study's storage: nothing to hash or cache
def tune_trial(
    project: Path,
    workspace: Path,
    raw: dict[str, Any],
    env: dict[str, str],
    trial: optuna.Trial,
    history_key: str,
    is_image: bool,
) -> FrozenTrial:
    """One trial as `flows.run_trial` runs a sweep trial: a fresh workspace, `dvc repro evaluate` in it, here
    in a process that is stopped as soon as the pruner says so. Tells the study the trial's objective (or
    PRUNED) and returns the finished trial; a failed pipeline raises and leaves the telling to the flow.

    `env` holds MLFLOW_TRACKING_URI and the parent run (tracking.PARENT_RUN_ENV) under which the trial's run
    opens; the score history is read from that run.
    """
    logger = get_run_logger()
    _make_workspace(project, workspace, raw)
    tags = json.loads(os.environ.get("MLFLOW_RUN_CONTEXT", "{}")) | flows._where() | {TRIAL_TAG: str(trial.number)}
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # dvc and cdgan of this venv
    cmd = ["dvc", "repro", "evaluate"]
    tail: deque[str] = deque(maxlen=flows.TAIL_LINES)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    parent_id = env[tracking.PARENT_RUN_ENV]
    experiment_id = client.get_run(parent_id).info.experiment_id  # trial runs open in their parent's experiment
    history = score_history(client, experiment_id, parent_id, trial.number, history_key)
    with subprocess.Popen(
        cmd,
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
        logger.info("trial %d pruned: its %s fell behind the earlier trials'", trial.number, history_key)
        _mark_pruned(client, experiment_id, parent_id, trial.number)
        return trial.study.tell(trial, state=TrialState.PRUNED)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed in {workspace} (exit {proc.returncode}):\n{''.join(tail)}")
    metrics = read_json(Paths(workspace).eval_metrics)
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            trial.set_user_attr(key, value)  # every evaluation metric beside the objective, for the summary
    return trial.study.tell(trial, objective(metrics, is_image))


def _make_workspace(project: Path, workspace: Path, raw: dict[str, Any]) -> None:
    """The workspace `flows.run_trial` makes: the project's pipeline and sources, these params, DVC without git."""
    if workspace.exists():
        shutil.rmtree(workspace)
    workspace.mkdir(parents=True)
    for name in flows.TRIAL_FILES:
        source = project / name
        if source.is_dir():
            shutil.copytree(source, workspace / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, workspace / name)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    flows._run_streaming(["dvc", "init", "--no-scm", "-q"], workspace)


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
) -> dict[str, Any]:
    """Grow the Optuna study `name` to `trials` finished (complete or pruned) trials over the search space in
    `space` (a YAML file relative to the project), on top of `params_path` and the dotted `base` overrides.

    The study lives in `storage` (an Optuna RDB URL; default sqlite under sweeps/optuna.db), so running the
    flow again with the same name continues it: trials a killed run left RUNNING are marked failed and queued
    again with their params. PARALLEL trials run at a time, each `dvc repro evaluate` in sweeps/<name>/ and
    a child MLflow run of this flow's parent run; a median pruner stops trials whose `train/fid` (`train/modes`
    for 2-D data) history falls behind. Writes presets/tuned-<name>.yaml (params.yaml with the best values),
    reports/tune-<name>.md and reports/tune-<name>/*.png, all logged to the parent run.
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    if not (project / "dvc.yaml").is_file():
        raise CdganError(f"{project / 'dvc.yaml'} not found: cdgan-tune runs the pipeline of a project directory")
    raw = flows._with_overrides(read_params_yaml(project / params_path), base or {})
    params = parse_params(raw, str(params_path))
    distributions = read_space(project / space, raw)
    if trials < 1:
        raise CdganError(f"cdgan-tune: trials must be >= 1 (got {trials})")
    metric, lower_is_better = primary_metric(params.data.is_image)
    signature = {
        "space": {key: distribution_to_json(d) for key, d in distributions.items()},
        "dataset": params.data.dataset,
    }
    storage = storage or default_storage(project)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    study = _open_study(storage, name, "minimize" if lower_is_better else "maximize", signature)
    _requeue_interrupted(study, logger)

    paths = Paths(project)
    runner = FlowRunContext.get().task_runner
    threads = str(max(1, (os.cpu_count() or 1) // PARALLEL))  # trials side by side must not oversubscribe cores
    about = {"study": name, "storage": storage, "space": space, "trials": trials}
    with tracking.sweep_run(params, paths, f"tune-{name}-{time.strftime('%Y%m%d-%H%M%S')}", about) as parent_id:
        tracking.set_tags({"cdgan.tune_study": name})
        env = {
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(paths),
            tracking.PARENT_RUN_ENV: parent_id,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads),
        }
        failure = _run_trials(study, distributions, trials, project, raw, env, f"train/{metric}", params, runner)
        best = _best_trial(study, failure)
        preset = _write_preset(project, name, flows._with_overrides(raw, best.params), study, best, metric)
        pictures = _write_plots(study, project / "reports" / f"tune-{name}")
        markdown = _write_summary(project / "reports" / f"tune-{name}.md", study, best, metric, storage, preset)
        for path in (preset, project / "reports" / f"tune-{name}.md", *pictures):
            tracking.log_artifact(path, "tune")
        tracking.log_metrics(None, {"best_value": best.value, "best_trial": best.number})
    create_markdown_artifact(markdown, key=f"tune-{name}".replace("_", "-"), description=f"cdgan-tune {name}")
    if failure is not None:
        raise failure
    return {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
            "preset": str(preset.relative_to(project)), "states": _state_counts(study)}  # fmt: skip


def _open_study(storage: str, name: str, direction: str, signature: dict[str, Any]) -> optuna.Study:
    """The study `name` in `storage`, created with `signature` (space, data set) or continued if it matches."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are logged by this flow, not per Optuna call
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS)
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, pruner=pruner, load_if_exists=True
    )
    # a resumed study draws afresh: TPE's random start seeded as before would repeat the first trials' params
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))
    before = study.user_attrs.get(STUDY_ATTR)
    if before is None:
        study.set_user_attr(STUDY_ATTR, signature)
    elif before != signature:
        raise CdganError(
            f"study {name!r} in {storage} was made with another search space or data set ({before}); "
            "give this one another --name"
        )
    return study


def _requeue_interrupted(study: optuna.Study, logger: Any) -> None:
    """Trials left RUNNING by a flow process of this host that is gone: failed, and queued again with their params.

    RUNNING trials of other hosts (several nodes on one RDB storage) or of live processes are left alone.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner_host, _, pid = str(trial.user_attrs.get(OWNER_ATTR, "")).rpartition(":")
        if owner_host != host or not pid.isdigit() or _is_alive(int(pid)):
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={REQUEUED_ATTR: trial.number})
        logger.warning(
            "trial %d was interrupted (its flow, pid %s, is gone): failed and queued again", trial.number, pid
        )


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_trials(
    study: optuna.Study,
    distributions: dict[str, BaseDistribution],
    trials: int,
    project: Path,
    raw: dict[str, Any],
    env: dict[str, str],
    history_key: str,
    params: Params,
    runner: Any,
) -> BaseException | None:
    """Ask, run and tell trials, PARALLEL at a time, until the study has `trials` finished ones (trials running
    elsewhere on the same storage count as on their way). A failed trial is recorded FAIL and stops the study
    once the trials beside it end, as Optuna's `optimize` does; its error is returned."""
    logger = get_run_logger()
    running: dict[int, Any] = {}  # trial number -> Prefect future
    failure: BaseException | None = None
    owner = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        while failure is None and len(running) < PARALLEL:
            in_flight = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if _finished(study) + in_flight >= trials:
                break
            trial = study.ask(distributions)
            trial.set_user_attr(OWNER_ATTR, owner)
            overrides = dict(trial.params)
            logger.info("trial %d: %s", trial.number, flows.trial_name(overrides))
            workspace = project / "sweeps" / study.study_name / f"trial-{trial.number:03d}"
            running[trial.number] = runner.submit(
                tune_trial.with_options(task_run_name=f"trial-{trial.number}"),
                {"project": project, "workspace": workspace, "raw": flows._with_overrides(raw, overrides),
                 "env": env, "trial": trial, "history_key": history_key, "is_image": params.data.is_image},
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


def _best_trial(study: optuna.Study, failure: BaseException | None) -> FrozenTrial:
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        if failure is not None:
            raise failure from None
        raise CdganError(f"study {study.study_name!r} has no complete trial (all pruned or failed)") from None


def _write_preset(
    project: Path, name: str, raw: dict[str, Any], study: optuna.Study, best: FrozenTrial, metric: str
) -> Path:
    """presets/tuned-<name>.yaml: the full params with the best trial's values, and where they came from."""
    path = project / "presets" / f"tuned-{name}.yaml"
    parse_params(raw, str(path))  # the space's ends were checked; this is the combination that won
    header = (
        f"# Tuned by cdgan-tune, study {name!r}: trial {best.number} of {len(study.trials)}, {metric} objective "
        f"{best.value:.6g}.\n# Values from the search: "
        + ", ".join(f"{key}={value}" for key, value in best.params.items())
        + f"\n# Use: cp presets/tuned-{name}.yaml params.yaml && dvc repro\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(header + yaml.safe_dump(raw, sort_keys=False)))
    return path


def _write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimisation history, intermediate values (what the pruner saw) and, from 2 complete trials on,
    parameter importances, as PNG files in `folder`."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    plots = {"history": vis.plot_optimization_history, "intermediate": vis.plot_intermediate_values}
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
        plots["importances"] = vis.plot_param_importances
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, plot in plots.items():
        # rc_context: optuna's plots switch to its ggplot style, which must not reach this process's later pictures
        with warnings.catch_warnings(), plt.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(study)
        figure = axes.figure
        path = folder / f"{name}.png"
        write_atomic(path, lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
        plt.close(figure)
        out.append(path)
    return out


def _state_counts(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _write_summary(path: Path, study: optuna.Study, best: FrozenTrial, metric: str, storage: str, preset: Path) -> str:
    keys = list(best.params)
    rows = "".join(
        f"| {t.number} | {t.state.name} | {'' if t.value is None else f'{t.value:.4g}'} | "
        + " | ".join(str(t.params.get(key, "")) for key in keys)
        + " |\n"
        for t in study.get_trials(deepcopy=False)
    )
    states = ", ".join(f"{count} {state.lower()}" for state, count in _state_counts(study).items())
    markdown = (
        f"# cdgan-tune {study.study_name}\n\nStudy `{study.study_name}` in `{storage}`: {states}; objective "
        f"{metric} ({study.direction.name.lower()}).\n\nBest: trial {best.number}, {best.value:.6g}, "
        + ", ".join(f"`{key}={value}`" for key, value in best.params.items())
        + f"; preset `{preset.name}`.\n\n| trial | state | {metric} | "
        + " | ".join(keys)
        + " |\n|---|---|---|"
        + "---|" * len(keys)
        + "\n"
        + rows
        + f"\n![history](tune-{study.study_name}/history.png)\n"
    )
    write_atomic(path, lambda tmp: tmp.write_text(markdown))
    return markdown


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run cdgan-tune: an Optuna study over a YAML search space.")
    parser.add_argument("--space", default="presets/tune-digits.yaml", help="search space file, relative to --project")
    parser.add_argument("--trials", type=int, default=20, help="finished trials the study should have")
    parser.add_argument("--name", default="digits", help="study name: rerun with it to continue the study")
    parser.add_argument("--params", default="params.yaml", help="base params file (or preset), relative to --project")
    parser.add_argument("--project", default=".", help="project directory holding dvc.yaml")
    parser.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///PROJECT/sweeps/optuna.db)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE override of the base params")
    args = parser.parse_args()
    try:
        overrides = {key: values[0] for key, values in flows._key_values(args.set).items()}
        best = cdgan_tune(args.space, args.trials, args.name, args.params, args.project, args.storage, overrides)
    except CdganError as err:
        raise SystemExit(f"cdgan: error: {err}") from None  # one line, no traceback
    print(json.dumps(best, indent=2))
