"""The cdgan-pipeline flow against a real temporary Prefect server, real DVC and a real MLflow store."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import State, TaskRun

from cdgan.errors import CdganError
from cdgan.params import Paths
from cdgan.ranking import IMAGE_OBJECTIVE, MIXTURE_OBJECTIVE, Objective
from pipelines import flows
from tests.conftest import REPO, make_project, run, tiny_raw


def task_runs(flow_run_id: UUID) -> list[TaskRun]:
    """The flow run's task runs from the Prefect API, in start order."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda task_run: task_run.start_time)


def log_lines(flow_run_id: UUID) -> list[str]:
    """Every line the flow run and its task runs logged, from the Prefect API."""
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_stages_follow_dvc_yaml_order() -> None:
    dvc_stages = tuple(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert dvc_stages == flows.STAGES, "the flow must run the stages in dvc.yaml order"


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_runs_every_stage_through_dvc(tmp_path: Path, mlflow_uri: str) -> None:
    # given a fresh project with tiny params
    project = make_project(tmp_path / "project", tiny_raw(register={"model_name": "cdgan-flow-test"}))

    # when the flow runs
    state = flows.cdgan_pipeline(params_path="params.yaml", project_dir=str(project), return_state=True)

    # then every stage ran as its own task, in dvc.yaml order, and DVC recorded them all
    assert state.is_completed(), state.message
    runs = task_runs(state.state_details.flow_run_id)
    assert [task_run.name for task_run in runs] == list(flows.STAGES)
    assert all(task_run.state.is_completed() for task_run in runs)
    status = run(["dvc", "status"], project).stdout
    assert "Data and pipelines are up to date" in status, status

    # and the evaluation metrics are returned and published with the MLflow run
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert "fid" in evaluation
    assert state.result() == {key: value for key, value in evaluation.items() if isinstance(value, int | float)}
    artifact = Artifact.get("cdgan-run")
    assert artifact.flow_run_id == state.state_details.flow_run_id
    assert evaluation["mlflow_run_id"] in artifact.data and mlflow_uri in artifact.data, artifact.data
    assert "http://127.0.0.1:5000/#/experiments/" in artifact.data, "a link to the run in the MLflow UI"
    assert f"/runs/{evaluation['mlflow_run_id']})" in artifact.data, artifact.data


@pytest.mark.usefixtures("prefect_harness")
def test_two_pipelines_started_together_in_one_project_run_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given one project, its own store, and two flow runs started at once with different seeds (a scheduled run
    # and a manual one)
    project = make_project(tmp_path / "project", tiny_raw(register={"model_name": "cdgan-lock-test"}))
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    seeds = (1, 2)

    def pipeline(seed: int) -> State:
        return flows.cdgan_pipeline(project_dir=str(project), overrides={"train.seed": seed}, return_state=True)

    with ThreadPoolExecutor(len(seeds)) as pool:
        states = list(pool.map(pipeline, seeds))

    # then both completed, each trained and registered under its own params in its own MLflow run
    assert all(state.is_completed() for state in states), [state.message for state in states]
    runs = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert sorted(r.data.params["train.seed"] for r in runs) == ["1", "2"], "one training run per flow run"
    assert all(r.info.status == "FINISHED" and "fid" in r.data.metrics for r in runs)
    # and the project ends consistent: dvc.lock records the params.yaml of the run that went second
    status = run(["dvc", "status"], project).stdout
    assert "Data and pipelines are up to date" in status, status
    last = json.loads((project / "metrics" / "train.json").read_text())["mlflow_run_id"]
    locked = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]
    assert str(locked["train"]["seed"]) == MlflowClient(uri).get_run(last).data.params["train.seed"]


@pytest.mark.usefixtures("prefect_harness")
def test_bad_param_fails_before_any_task(tmp_path: Path) -> None:
    # given a project whose params break a bound
    project = make_project(tmp_path / "project", tiny_raw(train={"cd_k": -1}))

    # when the flow runs
    state = flows.cdgan_pipeline(project_dir=str(project), return_state=True)

    # then it fails on validation, naming the key, with no task run and nothing written
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, CdganError) and "train.cd_k" in str(error), error
    assert task_runs(state.state_details.flow_run_id) == []
    assert not (project / "metrics" / "train.json").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_sweep_runs_every_trial_nested_under_one_mlflow_run_and_writes_the_report(
    tmp_path: Path, mlflow_uri: str
) -> None:
    # given a project on the 2-D grid and a 2 x 2 sweep (two losses, two seeds)
    raw = tiny_raw(data={"dataset": "grid25", "n_points": 500}, train={"eval_every": 0})
    project = make_project(tmp_path / "project", raw)
    grid = {"train.loss": ["cd", "bce"], "train.seed": [0, 1]}

    # when the sweep flow runs
    state = flows.cdgan_sweep(grid=grid, project_dir=str(project), name="tiny_comparison", return_state=True)

    # then four trials ran, each a DVC pipeline of its own, and the report groups them by loss over seeds
    assert state.is_completed(), state.message
    rows = state.result()
    assert [(r["train.loss"], r["train.seed"]) for r in rows] == [("cd", 0), ("cd", 1), ("bce", 0), ("bce", 1)]
    assert all(0 <= r["modes"] <= 25 and 0 <= r["hq_frac"] <= 1 for r in rows)
    report = (project / "reports" / "tiny_comparison.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| cd") or line.startswith("| bce")]
    assert len(table) == 2 and all("| 2 |" in line for line in table), report
    summary = (project / "reports" / "tiny_comparison.csv").read_text().splitlines()
    assert summary[0].startswith("train.loss,n,modes_mean,modes_std") and summary[0].endswith(",rank"), summary[0]

    # and MLflow holds one sweep run with the four trial runs as children, named by loss, k and seed
    import mlflow

    runs = mlflow.search_runs(experiment_names=["cdgan-grid25"], output_format="list")
    parents = [
        r for r in runs if r.data.tags.get("cdgan.kind") == "sweep" and r.info.run_name.startswith("tiny_comparison")
    ]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["bce-k2-s0", "bce-k2-s1", "cd-k2-s0", "cd-k2-s1"]
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "report")} >= {
        "report/tiny_comparison.md"
    }

    # and the two trials that started once the first two were done (two at a time) took the data and the
    # reference points from DVC's run cache, while every trial trained
    log = log_lines(state.state_details.flow_run_id)
    for stage in ("prepare", "reference"):
        assert sum(f"Stage '{stage}' is cached - skipping run" in line for line in log) >= 2, stage
    assert sum("Running stage 'train'" in line for line in log) == 4


@pytest.mark.usefixtures("prefect_harness")
def test_sweep_with_a_bad_value_fails_before_any_trial(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", tiny_raw())
    with pytest.raises(CdganError, match=r"sweep trial cd_k=-1.*train\.cd_k"):
        flows.cdgan_sweep(grid={"train.cd_k": [1, -1]}, project_dir=str(project))
    assert not (project / "sweeps").exists()


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_overrides_are_validated_then_written_to_params_yaml(tmp_path: Path) -> None:
    # given a project, and overrides for its flow run
    project = make_project(tmp_path / "project", tiny_raw())
    before = (project / "params.yaml").read_text()

    # when an override is out of bounds, the flow fails before any task and params.yaml is untouched
    with pytest.raises(CdganError, match=r"train\.steps"):
        flows.cdgan_pipeline(project_dir=str(project), overrides={"train.steps": 0})
    assert (project / "params.yaml").read_text() == before
    assert not (project / "metrics").exists()

    # and a missing params file is one clear error too
    with pytest.raises(CdganError, match=r"absent\.yaml: params file not found"):
        flows.cdgan_pipeline(params_path="absent.yaml", project_dir=str(project))


@pytest.mark.parametrize(
    ("objective", "history", "evaluation", "expected"),
    [
        # images: the first logged FID at or below the Gaussian mixture's, at 2 s a step (400 s / 200 steps)
        (IMAGE_OBJECTIVE, "step,fid\n50,30.0\n100,9.0\n150,7.5\n200,7.0\n", {"fid_gmm": 8.0}, 150 * 2.0),
        (IMAGE_OBJECTIVE, "step,fid\n50,30.0\n100,9.0\n", {"fid_gmm": 8.0}, float("nan")),
        # 2-D data: all but one mode covered
        (MIXTURE_OBJECTIVE, "step,modes,hq_frac\n50,20,0.1\n100,24,0.2\n", {"modes_floor": 25.0}, 100 * 2.0),
    ],
)
def test_seconds_to_target_reads_the_score_history(
    tmp_path: Path, objective: Objective, history: str, evaluation: dict, expected: float
) -> None:
    # given a trial workspace's training summary and score history
    paths = Paths(tmp_path)
    paths.train_plots.mkdir(parents=True)
    (paths.train_plots / "scores.csv").write_text(history)
    paths.metrics.mkdir()
    paths.train_metrics.write_text(json.dumps({"train_seconds": 400.0, "steps": 200}))
    # when
    seconds = flows.seconds_to_target(paths, evaluation, objective)
    # then
    assert seconds == pytest.approx(expected, nan_ok=True)
