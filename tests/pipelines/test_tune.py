"""The cdgan-tune flow against a real temporary Prefect server, real DVC, a real MLflow store and real Optuna
storage in SQLite."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from prefect.flows import load_flow_from_entrypoint

from cdgan.errors import CdganError
from cdgan.params import read_params_yaml
from cdgan.presets import load_preset
from cdgan.ranking import IMAGE_OBJECTIVE, MIXTURE_OBJECTIVE
from pipelines import cli, studies, tune
from tests.conftest import REPO, make_project, tiny_raw

LR = {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}


def tune_project(root: Path, space: dict, raw: dict | None = None) -> Path:
    """A project with `raw` params (default: tests.conftest.TINY, digits) and the search space in space.yaml."""
    project = make_project(root, raw or tiny_raw())
    (project / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    return project


def child_runs(parent_id: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def digits_experiment(mlflow_uri: str) -> str:
    """The id of cdgan-digits, the experiment of digits runs, made as tracking makes it (artifacts by the store)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("cdgan-digits")
    if experiment is not None:
        return experiment.experiment_id
    artifacts = Path(mlflow_uri.removeprefix("sqlite:///")).parent / "artifacts"
    return client.create_experiment("cdgan-digits", artifact_location=artifacts.resolve().as_uri())


def tune_parents(name: str) -> list:
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("cdgan-digits").experiment_id],
        f"tags.`cdgan.tune_study` = '{name}'",
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


@pytest.mark.usefixtures("prefect_harness")
def test_study_writes_the_best_preset_and_a_resumed_study_adds_trials(tmp_path: Path, mlflow_uri: str) -> None:
    # given a tiny digits project and a one-parameter space
    project = tune_project(tmp_path / "project", {"train.lr": LR})
    name = f"tiny-{uuid4().hex[:8]}"

    # when a study of 2 trials runs
    result = tune.cdgan_tune(space="space.yaml", trials=2, name=name, project_dir=str(project))

    # then both trials completed, each scored by the FID its own pipeline run wrote
    study = optuna.load_study(study_name=name, storage=studies.default_storage(project))
    first = study.get_trials()
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2, first
    for trial in first:
        evaluation = json.loads((project / "sweeps" / name / f"trial-{trial.number:03d}/metrics/eval.json").read_text())
        assert trial.value == evaluation["fid"], "the objective is the trial's metrics/eval.json fid"
        assert trial.value == IMAGE_OBJECTIVE.score(evaluation), "as the champion gate and the sweep report rank"
    best = min(first, key=lambda t: t.value)
    assert result["best_trial"] == best.number and result["best_value"] == best.value

    # and the preset is an overlay holding only the tuned key, which on the project's params.yaml gives the best
    preset_path = project / "presets" / f"tuned-{name}.yaml"
    params = load_preset(preset_path, project / "params.yaml")
    assert params.train.lr == best.params["train.lr"] and LR["low"] <= params.train.lr <= LR["high"]
    assert yaml.safe_load(preset_path.read_text()) == {"train": {"lr": best.params["train.lr"]}}

    # and MLflow holds one parent run with one child run per trial, and the study's plots in both places
    [parent] = tune_parents(name)
    assert parent.info.status == "FINISHED"
    children = child_runs(parent.info.run_id)
    assert sorted(r.data.tags[tune.TRIAL_TAG] for r in children) == ["0", "1"]
    assert {r.data.params["train.lr"] for r in children} == {str(t.params["train.lr"]) for t in first}
    logged = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/history.png", "tune/importances.png", f"tune/tuned-{name}.yaml"} <= logged, logged
    assert (project / "reports" / f"tune-{name}" / "history.png").stat().st_size > 0

    # given a flow of this study killed while trial 2 ran: RUNNING in the storage, owned by a process now gone
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    interrupted = study.ask({"train.lr": optuna.distributions.FloatDistribution(1.0e-4, 1.0e-3, log=True)})
    interrupted.set_user_attr(studies.OWNER_ATTR, f"{socket.gethostname()}:{gone.pid}")

    # when the study runs again to 3 trials
    tune.cdgan_tune(space="space.yaml", trials=3, name=name, project_dir=str(project))

    # then it kept the first two, failed the interrupted one and ran it again with its params: 3 finished
    trials = optuna.load_study(study_name=name, storage=studies.default_storage(project)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    assert [(t.datetime_start, t.value) for t in trials[:2]] == [(t.datetime_start, t.value) for t in first]
    assert trials[3].params == trials[2].params and trials[3].user_attrs[studies.REQUEUED_ATTR] == 2
    assert len(tune_parents(name)) == 2 and len(child_runs(tune_parents(name)[1].info.run_id)) == 1


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("space", "problems"),
    [
        ({"train.lrr": LR}, [r"train\.lrr.*Extra inputs are not permitted"]),
        ({"train.lr": LR | {"low": 0.1, "high": 0.01}}, [r"train\.lr: low > high \(0\.1 > 0\.01\)"]),
        ({"train.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, [r"train\.lr: unknown type 'uniform'"]),
        ({"train.cd_k": {"type": "int", "low": -1, "high": 3}}, [r"train\.cd_k.*greater than or equal to 0"]),
        (
            {"train.lr": LR | {"low": "5e-5"}, "model.spectral_norm": {"type": "categorical", "choices": []}},
            [r"train\.lr: low must be a number \(got '5e-5'\)", r"model\.spectral_norm: categorical needs"],
        ),
    ],
    ids=["unknown-key", "low-above-high", "unknown-type", "out-of-bounds", "two-problems"],
)
def test_bad_space_fails_with_one_error_before_any_trial(tmp_path: Path, space: dict, problems: list[str]) -> None:
    # given a project whose search space has problems (validation needs no git or DVC repository)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    (project / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))

    # when the flow runs, then one CdganError names every problem
    with pytest.raises(CdganError) as caught:
        tune.cdgan_tune(space="space.yaml", trials=2, name="bad", project_dir=str(project))
    message = str(caught.value)
    assert message.startswith(str(project / "space.yaml")), message
    for problem in problems:
        assert re.search(problem, message), f"{problem!r} not in: {message}"

    # and nothing was written: no study, no workspace, no preset
    assert not (project / "sweeps").exists()
    assert not (project / "presets").exists()


def forced_study(tmp_path: Path, upper: float) -> optuna.Study:
    """A study whose pruner prunes any reported FID above `upper` (a real Optuna pruner, forced by its threshold)."""
    return optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'optuna.db'}", pruner=optuna.pruners.ThresholdPruner(upper=upper)
    )


@pytest.mark.filterwarnings("ignore:The reported value is ignored")  # the second watch re-reads step 10
def test_prune_decision_is_taken_from_the_logged_history(
    tmp_path: Path, mlflow_uri: str, spawn: Callable[..., subprocess.Popen]
) -> None:
    # given a trial's MLflow run under a parent, with train/fid logged at step 10 below the threshold
    client = MlflowClient()
    experiment_id = client.create_experiment(f"tune-prune-{uuid4().hex[:8]}")
    parent = client.create_run(experiment_id).info.run_id
    study = forced_study(tmp_path, upper=50.0)
    trial = study.ask()
    run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, tune.TRIAL_TAG: str(trial.number)})
    client.log_metric(run.info.run_id, "train/fid", 40.0, step=10)
    history = tune.score_history(client, experiment_id, parent, trial.number, IMAGE_OBJECTIVE)
    training = spawn([sys.executable, "-c", "import time; time.sleep(600)"])

    # when the watch sees only that value, it keeps the process; when a step above it is logged, it stops it
    logged_later = spawn(
        [sys.executable, "-c", "import sys, time; time.sleep(2 * float(sys.argv[1]))", str(tune.POLL_SECONDS)]
    )
    is_pruned = tune.watch(logged_later, trial, history)
    assert not is_pruned and trial.study.trials[0].intermediate_values == {10: 40.0}
    client.log_metric(run.info.run_id, "train/fid", 90.0, step=20)
    is_pruned = tune.watch(training, trial, history)

    # then the trial was pruned on the logged step-20 value, the process is gone, and the trial records PRUNED
    assert is_pruned
    assert training.poll() is not None, "the pruned trial's process is stopped"
    assert study.trials[0].intermediate_values == {10: 40.0, 20: 90.0}
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[0].state == TrialState.PRUNED and study.trials[0].value == 90.0


def test_the_pruner_sees_the_objective_score_of_the_logged_history(mlflow_uri: str) -> None:
    # given a 2-D trial's MLflow run with modes and hq_frac logged at steps 10 and 20, and modes alone at 30
    client = MlflowClient()
    experiment_id = client.create_experiment(f"tune-history-{uuid4().hex[:8]}")
    parent = client.create_run(experiment_id).info.run_id
    run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, tune.TRIAL_TAG: "0"}).info.run_id
    for step, modes, hq_frac in ((10, 20, 0.4), (20, 25, 0.8)):
        client.log_metric(run, "train/modes", modes, step=step)
        client.log_metric(run, "train/hq_frac", hq_frac, step=step)
    client.log_metric(run, "train/modes", 25, step=30)

    # when the trial's history is read for the pruner
    history = tune.score_history(client, experiment_id, parent, 0, MIXTURE_OBJECTIVE)()

    # then it holds the objective's score, on which the trial's final value is told, where both figures are logged
    assert history == [(10, pytest.approx(20.2)), (20, pytest.approx(25.4))]


@pytest.mark.usefixtures("prefect_harness")
# the task runs here outside a flow run, so the lines of its workspace's setup stages reach no flow run's log
@pytest.mark.filterwarnings("ignore:Logger 'prefect.task_runs' attempted to send logs to the API without a flow")
def test_pruned_trial_stops_its_pipeline_and_is_recorded_pruned(tmp_path: Path, mlflow_uri: str) -> None:
    # given a trial whose training would take long, under a pruner forced to prune any FID
    raw = tiny_raw(train={"steps": 1000, "eval_every": 10})
    project = make_project(tmp_path / "project", raw)
    study = forced_study(tmp_path, upper=0.0)
    trial = study.ask()
    client = MlflowClient()
    experiment_id = digits_experiment(mlflow_uri)  # where the trial's stage opens its run, beside its parent
    parent = client.create_run(experiment_id).info.run_id
    env = {"MLFLOW_TRACKING_URI": mlflow_uri, "CDGAN_PARENT_RUN_ID": parent, "OMP_NUM_THREADS": "1"}

    # when the trial task runs its pipeline
    workspace = tmp_path / "trial"
    ref = studies.StudyRef(f"sqlite:///{tmp_path / 'optuna.db'}", study.study_name, study.pruner)
    finished = tune.tune_trial(project, workspace, raw, env, ref, trial.number, IMAGE_OBJECTIVE)

    # then it was pruned on the FID its training logged, the pipeline stopped before evaluate, and Optuna says PRUNED
    assert finished.state == TrialState.PRUNED and study.trials[0].state == TrialState.PRUNED
    [child] = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    logged = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "train/fid")}
    assert finished.intermediate_values and finished.intermediate_values.items() <= logged.items()
    assert child.info.status != "RUNNING", "the stopped stage ended its MLflow run"
    assert child.data.tags[tune.STATE_TAG] == "PRUNED"
    assert not (workspace / "metrics" / "eval.json").exists()
    assert not (workspace / "models" / "generator.pt").exists(), "training was stopped before its end"


def test_tune_deployment_loads_the_flow_with_its_parameters_and_a_valid_space() -> None:
    # given the tuning deployments of prefect.yaml
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    tuning = [d for d in deployments if d["entrypoint"].startswith("pipelines.tune.")]
    assert tuning, "prefect.yaml deploys cdgan-tune"
    for deployment in tuning:
        # when Prefect loads the entrypoint as a deployment run does (a module path of the pipelines package)
        loaded = load_flow_from_entrypoint(deployment["entrypoint"])

        # then it is cdgan-tune, takes those parameters, and the space they name is valid on params.yaml
        assert loaded.name == "cdgan-tune"
        assert set(deployment["parameters"]) <= set(inspect.signature(loaded.fn).parameters), deployment
        loaded.validate_parameters(deployment["parameters"])
        space = studies.read_space(REPO / deployment["parameters"]["space"], read_params_yaml(REPO / "params.yaml"))
        assert space, deployment["parameters"]["space"]


@pytest.mark.parametrize("storage", ["journal:", "sweeps/optuna.db", "bogus://host/db"])
def test_a_bad_storage_is_one_error_line_before_prefect_starts(
    tmp_path: Path, storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project with a valid search space
    project = tune_project(tmp_path / "project", {"train.lr": LR})
    # when cdgan-tune is given a storage in none of the accepted forms
    with pytest.raises(SystemExit) as exit_info:
        cli.tune_main(["--space", "space.yaml", "--storage", storage, "--project", str(project)])
    # then it exits 1 on one line naming the storage, before any flow run, trial workspace or study
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1 and out == "", err
    assert err.startswith(f"cdgan: error: --storage {storage!r}: ") and len(err.splitlines()) == 1, err
    assert not (project / "sweeps").exists()
