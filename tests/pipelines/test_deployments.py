"""The deployments in prefect.yaml as users run them: `prefect deploy`, `prefect deployment run` and a process
worker, against a real `prefect server` and a real `mlflow server` on loopback ports."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.flows import load_flow_from_entrypoint

from cdgan.files import load_torch
from cdgan.params import Paths
from tests.conftest import REPO, make_project, run, tiny_raw, wait_for_checkpoint
from tests.pipelines.conftest import Server, client_env, stop_group

POOL = "cdgan-local"  # the work pool named in prefect.yaml
DEPLOYMENT = "cdgan-pipeline/daily"
WORKER_SECONDS = 300  # one tiny pipeline run through DVC, on a busy 2-core machine


@dataclass(frozen=True)
class Deployed:
    project: Path
    env: dict[str, str]  # prefect CLI, worker and flow runs: the two servers and CDGAN_PROJECT_DIR
    prefect: Server
    mlflow: Server
    model_name: str


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, prefect_server: Server, mlflow_server: Server) -> Deployed:
    """A fresh project with the repo's prefect.yaml (the flows come from the installed pipelines package), its
    work pool and deployments created."""
    model_name = f"cdgan-deploy-{uuid4().hex[:8]}"
    project = make_project(
        tmp_path_factory.mktemp("deployed") / "project", tiny_raw(register={"model_name": model_name})
    )
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "deployments"], project)
    env = client_env(prefect_server, mlflow_server, CDGAN_PROJECT_DIR=str(project))
    run(["prefect", "work-pool", "create", POOL, "--type", "process"], project, env=env)
    run(["prefect", "--no-prompt", "deploy", "--all"], project, env=env)
    return Deployed(project, env, prefect_server, mlflow_server, model_name)


def trigger(deployed: Deployed, **params: str) -> UUID:
    """`prefect deployment run` with `--param` for each of `params`; the new flow run's id."""
    flags = [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]
    out = run(["prefect", "deployment", "run", DEPLOYMENT, *flags], deployed.project, env=deployed.env).stdout
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, out
    return UUID(found[1])


def start_worker(deployed: Deployed, cwd: Path) -> subprocess.Popen:
    """`prefect worker start --run-once` from `cwd`, in its own process group, output to cwd/worker.log: it
    takes the scheduled runs and exits when they end."""
    cmd = ["prefect", "worker", "start", "--pool", POOL, "--run-once", "--limit", "1"]
    with (cwd / "worker.log").open("a") as log:
        return subprocess.Popen(
            cmd, cwd=cwd, env=deployed.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish_worker(proc: subprocess.Popen, cwd: Path) -> str:
    """Wait for a `start_worker` worker to exit; its log."""
    try:
        proc.wait(timeout=WORKER_SECONDS)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        log = (cwd / "worker.log").read_text()
        raise AssertionError(f"worker still running after {WORKER_SECONDS}s:\n{log}") from None
    finally:
        stop_group(proc)  # the worker's flow-run subprocesses too, whatever happened
    log = (cwd / "worker.log").read_text()
    assert proc.returncode == 0, log
    return log


def work_once(deployed: Deployed, cwd: Path) -> str:
    """A worker from `cwd` that takes the scheduled runs; returns when they end."""
    return finish_worker(start_worker(deployed, cwd), cwd)


def flow_run(deployed: Deployed, flow_run_id: UUID) -> tuple[FlowRun, list[str]]:
    """The flow run as the server has it, and the names of its task runs."""
    with SyncPrefectClient(deployed.prefect.url) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return flow_run, [task.name for task in tasks]


def all_runs(deployed: Deployed) -> list:
    client = MlflowClient(tracking_uri=deployed.mlflow.url)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiments, run_view_type=ViewType.ALL)


def test_prefect_yaml_declares_the_pool_it_is_tested_with() -> None:
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["daily"]["work_pool"]["name"] == POOL
    assert deployments["daily"]["entrypoint"] == "pipelines.flows.cdgan_pipeline"
    # one pipeline at a time per project, and every deployment's runs get the threads their figures depend on
    assert deployments["daily"]["concurrency_limit"] == 1
    threads = {name: d["work_pool"]["job_variables"]["env"]["OMP_NUM_THREADS"] for name, d in deployments.items()}
    assert threads == {"daily": "2", "loss-comparison": "1", "tune-digits": "1"}, threads


@pytest.mark.parametrize(
    "deployment", yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"], ids=lambda d: d["name"]
)
def test_each_deployment_loads_its_flow_from_the_package_with_its_parameters(deployment: dict) -> None:
    # when Prefect loads the entrypoint as `prefect deploy` and a flow run do: a module path of the pipelines package
    flow = load_flow_from_entrypoint(deployment["entrypoint"])

    # then it is the package's flow, named after the module's function as docs and CLI name it, and the
    # deployment's parameters are ones the flow takes and accepts
    module, _, function = deployment["entrypoint"].rpartition(".")
    assert module.startswith("pipelines.") and flow.fn is getattr(importlib.import_module(module), function).fn
    assert flow.name == function.replace("_", "-"), (flow.name, function)
    assert set(deployment["parameters"]) <= set(inspect.signature(flow.fn).parameters), deployment
    flow.validate_parameters(deployment["parameters"])


def test_triggered_deployment_run_completes_through_a_worker(deployed: Deployed, tmp_path: Path) -> None:
    # given the project's deployments on a real server, and a run of cdgan-pipeline/daily triggered from the CLI
    flow_run_id = trigger(deployed)

    # when a process worker, started away from the project, takes it
    log = work_once(deployed, tmp_path)

    # then the run completed on the server, every stage a task, in the project named by CDGAN_PROJECT_DIR
    state, tasks = flow_run(deployed, flow_run_id)
    assert state.state.is_completed(), f"{state.state.name}: {state.state.message}\n{log}"
    assert sorted(tasks) == sorted(["prepare", "reference", "train", "evaluate", "register"]), tasks
    status = run(["dvc", "status"], deployed.project).stdout
    assert "Data and pipelines are up to date" in status, status

    # and the MLflow server holds the finished run and a version of the model registered from it
    run_id = yaml.safe_load((deployed.project / "metrics" / "train.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=deployed.mlflow.url)
    assert client.get_run(run_id).info.status == "FINISHED"
    versions = client.search_model_versions(f"name = '{deployed.model_name}'")
    assert [v.run_id for v in versions] == [run_id], versions
    assert "fid" in client.get_run(run_id).data.metrics


def test_bad_run_parameter_fails_before_any_task_and_leaves_no_mlflow_run(deployed: Deployed, tmp_path: Path) -> None:
    # given a params file that breaks a bound, passed as the deployment run's params_path
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny_raw(train={"cd_k": -1}), sort_keys=False))
    runs_before = {r.info.run_id for r in all_runs(deployed)}

    # when a worker runs it
    flow_run_id = trigger(deployed, params_path=str(bad))
    log = work_once(deployed, tmp_path)

    # then the flow run failed on validation, naming the key, before any task ran
    state, tasks = flow_run(deployed, flow_run_id)
    assert state.state.is_failed(), f"{state.state.name}: {state.state.message}\n{log}"
    assert "train.cd_k" in state.state.message, state.state.message
    assert tasks == []

    # and MLflow got no new run, and has none left RUNNING
    runs = all_runs(deployed)
    assert {r.info.run_id for r in runs} == runs_before
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


def test_a_cancelled_flow_run_ends_its_mlflow_run_killed_and_a_rerun_resumes(
    deployed: Deployed, tmp_path: Path
) -> None:
    """Prefect cancels a flow run by SIGTERM to the flow run's process group, which holds `dvc repro` and the
    `cdgan train` it runs."""
    # given a deployment run whose training lasts long enough to be cancelled past its first checkpoint
    # (300 steps: a minute or more on a busy machine; the cancel lands a few seconds after step 5's checkpoint)
    overrides = json.dumps({"train.steps": 300, "train.checkpoint_every": 5, "train.eval_every": 0})
    resume_dir = Paths(deployed.project).resume
    runs_before = {r.info.run_id for r in all_runs(deployed)}
    try:
        flow_run_id = trigger(deployed, overrides=overrides)
        worker = start_worker(deployed, tmp_path)
        wait_for_checkpoint(worker, resume_dir, seconds=WORKER_SECONDS)

        # when the flow run is cancelled, as `prefect flow-run cancel` or the UI do
        with SyncPrefectClient(deployed.prefect.url) as client:
            client.set_flow_run_state(flow_run_id, State(type=StateType.CANCELLING))
        log = finish_worker(worker, tmp_path)

        # then the flow run is CANCELLED, its training run ended KILLED, no MLflow run is left RUNNING
        state, _ = flow_run(deployed, flow_run_id)
        assert state.state.is_cancelled(), f"{state.state.name}: {state.state.message}\n{log}"
        (checkpoint,) = resume_dir.glob("*.pt")
        run_id = load_torch(checkpoint)["meta"]["mlflow_run_id"]
        mlflow = MlflowClient(tracking_uri=deployed.mlflow.url)
        assert mlflow.get_run(run_id).info.status == "KILLED", log
        assert [r.info.run_id for r in all_runs(deployed) if r.info.status == "RUNNING"] == []

        # when the deployment runs again
        rerun_id = trigger(deployed, overrides=overrides)
        log = work_once(deployed, tmp_path)

        # then it completes, and training resumed from the checkpoint (whose meta names the run) into that run
        state, _ = flow_run(deployed, rerun_id)
        assert state.state.is_completed(), f"{state.state.name}: {state.state.message}\n{log}"
        assert yaml.safe_load((deployed.project / "metrics" / "train.json").read_text())["mlflow_run_id"] == run_id
        assert mlflow.get_run(run_id).info.status == "FINISHED"
        assert {r.info.run_id for r in all_runs(deployed)} - runs_before == {run_id}, "one training run in all"
        assert not any(resume_dir.glob("*.pt"))
    finally:  # later tests get the project's own params.yaml
        run(["git", "checkout", "--", "params.yaml"], deployed.project)
