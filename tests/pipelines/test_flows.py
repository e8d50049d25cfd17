"""The cdgan-pipeline flow against a real temporary Prefect server, real DVC and a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun

from cdgan.errors import CdganError
from pipelines import flows
from tests.conftest import REPO, make_project, run, tiny_raw


def task_runs(flow_run_id: UUID) -> list[TaskRun]:
    """The flow run's task runs from the Prefect API, in start order."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda task_run: task_run.start_time)


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
