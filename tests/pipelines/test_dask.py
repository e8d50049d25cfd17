"""cdgan-sweep and cdgan-tune on a real Dask cluster: `dask scheduler` and two single-threaded `dask worker`
processes on 127.0.0.1, with the real Prefect harness server, real DVC trials, a real MLflow store and real
Optuna storage in SQLite or a journal file."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from distributed import Client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL

from cdgan.errors import CdganError
from cdgan.ranking import MIXTURE_OBJECTIVE
from pipelines import flows, studies, tune
from tests.conftest import BIN, make_project, run, tiny_raw
from tests.pipelines.conftest import dask_cluster, free_port

N_WORKERS = 2


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The address of a `dask_cluster` of N_WORKERS single-threaded worker processes, for the module."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), N_WORKERS) as address:
        yield address


def worker_pids(address: str) -> dict[str, int]:
    """{worker address: pid} of the cluster's worker processes."""
    with Client(address, timeout=60, set_as_default=False) as client:
        return client.run(os.getpid)


@pytest.mark.usefixtures("prefect_harness")
def test_sweep_runs_its_trials_on_two_dask_worker_processes(
    tmp_path: Path, mlflow_uri: str, dask_scheduler: str
) -> None:
    # given a project on the 2-D grid, two trials, and a cluster of two single-threaded worker processes
    raw = tiny_raw(data={"dataset": "grid25", "n_points": 500}, train={"eval_every": 0})
    project = make_project(tmp_path / "project", raw)
    pids = worker_pids(dask_scheduler)
    assert len(pids) == N_WORKERS, pids

    # when the sweep flow runs on that cluster
    state = flows.cdgan_sweep(
        grid={"train.loss": ["cd", "bce"]},
        project_dir=str(project),
        name="dask_comparison",
        cluster=dask_scheduler,
        return_state=True,
    )

    # then both trials finished as Prefect task runs of the flow and the report has both rows
    assert state.is_completed(), state.message
    assert [row["train.loss"] for row in state.result()] == ["cd", "bce"]
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    assert sorted((t.name, t.state.type.value) for t in task_runs) == [
        ("loss=bce", "COMPLETED"),
        ("loss=cd", "COMPLETED"),
    ]
    assert {p.name for p in (project / "reports" / "dask_comparison").iterdir()} == {"loss=cd.png", "loss=bce.png"}

    # and each has its own finished MLflow run under the sweep's run
    runs = mlflow.search_runs(experiment_names=["cdgan-grid25"], output_format="list")
    (parent,) = [
        r for r in runs if r.data.tags.get("cdgan.kind") == "sweep" and r.info.run_name.startswith("dask_comparison")
    ]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["bce-k2-s0", "cd-k2-s0"]
    assert all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]

    # and the two trials ran in the two worker processes, one each, as their runs' tags record
    tags = [r.data.tags for r in children]
    assert sorted(t.get("cdgan.dask_worker", "") for t in tags) == sorted(pids), tags
    for t in tags:
        assert t["cdgan.worker"] == f"{socket.gethostname()}:{pids[t['cdgan.dask_worker']]}", t


JOURNAL = "sweeps/optuna.log"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_tune_runs_its_trials_on_two_dask_worker_processes_and_the_pruner_sees_their_history(
    journal: bool, tmp_path: Path, mlflow_uri: str, dask_scheduler: str
) -> None:
    # given a 2-D project whose trials log a modes history, a one-parameter space, the two-worker cluster, and the
    # study kept in the default SQLite file or in a journal file (--storage journal:PATH)
    raw = tiny_raw(data={"dataset": "grid25", "n_points": 500}, train={"eval_every": 10})
    project = make_project(tmp_path / "project", raw)
    (project / "space.yaml").write_text(
        yaml.safe_dump({"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}})
    )
    pids = worker_pids(dask_scheduler)
    name, storage = ("journal", {"storage": f"journal:{JOURNAL}"}) if journal else ("on-dask", {})

    # when a study of 2 trials runs on that cluster
    result = tune.cdgan_tune(space="space.yaml", trials=2, name=name, project_dir=str(project),
                             cluster=dask_scheduler, **storage)  # fmt: skip

    # then both trials completed in the study (reopened by Optuna's own storage classes), scored by their own
    # pipelines, and the preset holds the best
    if journal:
        opened = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(project / JOURNAL)))
        assert not (project / "sweeps" / "optuna.db").exists(), "no SQLite storage beside the journal"
    else:
        opened = studies.default_storage(project)
    trials = optuna.load_study(study_name=name, storage=opened).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], trials
    for trial in trials:
        evaluation = yaml.safe_load(
            (project / "sweeps" / name / f"trial-{trial.number:03d}/metrics/eval.json").read_text()
        )
        assert trial.value == MIXTURE_OBJECTIVE.score(evaluation)
        # the workers reported the objective's score over the logged train/modes and hq_frac history to the pruner
        assert sorted(trial.intermediate_values) == [10, 20], trial.intermediate_values
    assert (project / "presets" / f"tuned-{name}.yaml").is_file() and result["best_trial"] in (0, 1)

    # and they ran in the two worker processes, one each, as their child MLflow runs record
    [parent] = [
        r for r in mlflow.search_runs(experiment_names=["cdgan-grid25"], output_format="list")
        if r.data.tags.get("cdgan.tune_study") == name
    ]  # fmt: skip
    children = mlflow.search_runs(
        experiment_names=["cdgan-grid25"],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    tags = [r.data.tags for r in children]
    assert sorted(t[tune.TRIAL_TAG] for t in tags) == ["0", "1"]
    assert sorted(t.get("cdgan.dask_worker", "") for t in tags) == sorted(pids), tags
    assert all(r.info.status == "FINISHED" for r in children), [r.info.status for r in children]


@pytest.mark.usefixtures("prefect_harness")
def test_bad_or_unreachable_scheduler_fails_before_any_trial(tmp_path: Path) -> None:
    # given a project, and a port where no scheduler listens
    project = make_project(tmp_path / "project", tiny_raw())
    address = f"tcp://127.0.0.1:{free_port()}"

    # when the sweep is pointed at it, it fails naming the address and how to start a cluster
    with pytest.raises(CdganError, match=rf"Dask scheduler {address} is unreachable.*`dask scheduler`.*`dask worker"):
        flows.cdgan_sweep(grid={"train.seed": [0, 1]}, project_dir=str(project), cluster=address)
    # and an address without a port is refused as such
    with pytest.raises(CdganError, match=r"'127\.0\.0\.1'.*missing port.*expected tcp://HOST:PORT"):
        flows.cdgan_sweep(grid={"train.seed": [0, 1]}, project_dir=str(project), cluster="127.0.0.1")
    # and a study pointed at it fails the same way, before its storage is touched
    (project / "space.yaml").write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3}}))
    with pytest.raises(CdganError, match=rf"Dask scheduler {address} is unreachable"):
        tune.cdgan_tune(space="space.yaml", trials=2, name="x", project_dir=str(project), cluster=address)
    # then no trial workspace or study storage was made
    assert not (project / "sweeps").exists()

    # and the CLI ends on that one error line and exits non-zero
    cli = [str(BIN / "cdgan-sweep"), "--project", str(project)]
    result = run([*cli, "--grid", "train.seed=0,1", "--cluster", address], project, check=False,
                 env={"PREFECT_API_URL": PREFECT_API_URL.value()})  # fmt: skip
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cdgan: error: Dask scheduler {address} is unreachable"), result.stderr[-2000:]
    assert "dask scheduler" in last and f"dask worker {address}" in last, last
    assert not (project / "sweeps").exists()
