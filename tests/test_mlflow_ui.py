"""What the MLflow UI shows of a cdgan run: the git source on the run page, the sample grid over training in the
image slider, the best generator as a LoggedModel, and system metrics; all in a real SQLite store."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_DIRTY, MLFLOW_GIT_REPO_URL

from cdgan import tracking
from cdgan.data import device_or_stream, load_dataset
from cdgan.files import load_torch
from cdgan.params import Params, Paths, parse_params
from cdgan.stages.prepare import prepare
from cdgan.stages.train import BEST_MODEL, train
from cdgan.train import fit, init_state
from tests.conftest import run, tiny_raw

STEPS = {"steps": 40, "log_every": 10, "eval_every": 10, "checkpoint_every": 40}
LOG_STEPS = [10, 20, 30, 40]


def _git(root: Path, *args: str) -> str:
    return run(["git", "-c", "user.email=t@cdgan", "-c", "user.name=t", *args], root).stdout.strip()


def test_the_run_page_shows_the_project_s_commit_as_git_commit_does(
    tiny_params: Params, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # whatever store earlier tests left MLflow at
    # given a committed project on branch main whose remote URL holds a token
    root = tmp_path / "project"
    root.mkdir()
    (root / "source.py").write_text("x = 1\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "remote", "add", "origin", "https://user:secret@example.com/team/cdgan.git")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "first")
    paths = Paths(root)
    client = MlflowClient(mlflow_uri)

    # when a stage opens a new run (MLflow tags it with the commit of the repository the test runs from)
    with tracking.tracked_run(tiny_params, paths) as run_id:
        pass

    # then MLflow's source tags are the project's, one value with git_commit, and the token stays out
    tags = client.get_run(run_id).data.tags
    first = _git(root, "rev-parse", "HEAD")
    assert tags[MLFLOW_GIT_COMMIT] == tags["git_commit"] == first
    assert tags[MLFLOW_GIT_DIRTY] == tags["git_dirty"] == "false"
    assert tags[MLFLOW_GIT_BRANCH] == "main"
    assert tags[MLFLOW_GIT_REPO_URL] == "https://example.com/team/cdgan.git", "credentials in the run's tags"

    # when the project moves on (a new commit, detached, no remote) and a later stage continues the run
    (root / "source.py").write_text("x = 2\n")
    _git(root, "commit", "-qam", "second")
    _git(root, "checkout", "-q", "--detach")
    _git(root, "remote", "remove", "origin")
    with tracking.tracked_run(tiny_params, paths, run_id):
        pass

    # then both commit tags moved together, and what git no longer knows is not left from before
    tags = client.get_run(run_id).data.tags
    second = _git(root, "rev-parse", "HEAD")
    assert second != first and tags[MLFLOW_GIT_COMMIT] == tags["git_commit"] == second
    assert MLFLOW_GIT_BRANCH not in tags and MLFLOW_GIT_REPO_URL not in tags, tags


def test_outside_git_the_run_page_says_unknown_not_another_repository_s_commit(
    tiny_params: Params, tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    # when a run starts in a project that is no git checkout (MLflow finds the test's own repository)
    with tracking.tracked_run(tiny_params, Paths(tmp_path)) as run_id:
        pass
    # then no source tag names a commit, branch or remote other than the project's
    tags = MlflowClient(mlflow_uri).get_run(run_id).data.tags
    assert tags[MLFLOW_GIT_COMMIT] == tags["git_commit"] == "unknown"
    assert not {MLFLOW_GIT_BRANCH, MLFLOW_GIT_REPO_URL, MLFLOW_GIT_DIRTY} & set(tags), tags


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> tuple[Params, Paths, str]:
    """A tiny digits training that scores every 10 of its 40 steps, in the session's store."""
    params = parse_params(tiny_raw(train=STEPS))
    paths = Paths(tmp_path_factory.mktemp("ui-project"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # whatever store earlier tests left MLflow at
        prepare(params, paths)
        return params, paths, train(params, paths).mlflow_run_id


def test_the_sample_grid_is_logged_at_every_scoring_step(trained: tuple[Params, Paths, str], mlflow_uri: str) -> None:
    _, _, run_id = trained
    client = MlflowClient(mlflow_uri)
    # then the run's images (the UI's slider) hold one full-size grid per scoring step under one key
    names = [Path(a.path).name for a in client.list_artifacts(run_id, "images")]
    grids = [name for name in names if name.endswith(".png")]
    steps = sorted(int(re.match(r"train~samples\+step\+(\d+)\+", name).group(1)) for name in grids)
    assert steps == LOG_STEPS, names
    assert client.get_run(run_id).data.tags.get("mlflow.loggedImages") == "True"
    # and a grid is the picture of 64 upscaled 8x8 digits
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"images/{grids[0]}")
    assert mlflow.Image(path).to_array().shape == (274, 274, 3)


def test_each_new_best_train_fid_is_a_logged_model_with_its_step_and_metrics(
    trained: tuple[Params, Paths, str], mlflow_uri: str
) -> None:
    params, _, run_id = trained
    client = MlflowClient(mlflow_uri)
    run_ = client.get_run(run_id)
    fids = [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "train/fid"), key=lambda m: m.step)]
    records = [(step, fid) for i, (step, fid) in enumerate(fids) if all(fid < f for _, f in fids[:i])]

    # then the run has one LoggedModel per new best, at that step, holding that step's metrics
    models = mlflow.search_logged_models(
        experiment_ids=[run_.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    assert all(m.name == BEST_MODEL and m.status == LoggedModelStatus.READY for m in models), models
    steps = {o.model_id: o.step for o in run_.outputs.model_outputs}
    by_step = {steps[m.model_id]: m for m in models}
    assert sorted(by_step) == [step for step, _ in records], (fids, sorted(by_step))
    for step, fid in records:
        metrics = {m.key: m.value for m in by_step[step].metrics if m.step == step}
        assert metrics["train/fid"] == fid and "loss_e" in metrics and "system/cpu_percent" in metrics, metrics
        assert by_step[step].params["train.steps"] == str(params.train.steps)
        assert by_step[step].tags[MLFLOW_GIT_COMMIT] == run_.data.tags[MLFLOW_GIT_COMMIT]

    # and the best one ranks first by train/fid, and loads as a generator: latents in, digits in [-1, 1] out
    (best,) = mlflow.search_logged_models(
        experiment_ids=[run_.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "metrics.train/fid", "ascending": True}],
        max_results=1,
        output_format="list",
    )
    assert steps[best.model_id] == records[-1][0]
    x = mlflow.pyfunc.load_model(f"models:/{best.model_id}").predict(np.zeros((3, params.model.z_dim), np.float32))
    assert x.shape == (3, 1, 8, 8) and np.abs(x).max() <= 1


def test_system_metrics_are_logged_at_every_log_step(trained: tuple[Params, Paths, str], mlflow_uri: str) -> None:
    _, paths, run_id = trained
    client = MlflowClient(mlflow_uri)
    # then each log step has the machine's and the process's CPU and memory use, in their ranges
    bounds = {"system/cpu_percent": 100, "system/memory_percent": 100}
    bounds["system/process_cpu_percent"] = 100 * psutil.cpu_count()  # 100 per busy core
    for key, bound in bounds.items():
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == LOG_STEPS, key
        assert all(0 <= m.value <= bound for m in history), (key, history)
    memory = client.get_metric_history(run_id, "system/process_memory_mib")
    assert sorted(m.step for m in memory) == LOG_STEPS and all(m.value > 0 for m in memory)
    assert not any(key.startswith("system/gpu") for key in client.get_run(run_id).data.metrics), "no GPU here"
    # and they stay out of the loss history the stage writes
    assert "system" not in (paths.train_plots / "losses.csv").read_text()


def test_what_is_logged_leaves_the_training_as_the_bare_loop_trains_it(trained: tuple[Params, Paths, str]) -> None:
    # given the same params and data trained by the loop alone: no scores, pictures, models or metrics
    params, paths, _ = trained
    real = load_dataset(paths.dataset)
    device = torch.device("cpu")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # as the stage trains on the CPU
    try:
        state = init_state(params.model, params.train, real.shape, device)
        fit(state, device_or_stream(params.train, real.x, 0, device), params.train, lambda step, values: None)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    # then the stage's networks are the same, bit for bit: logging drew from no random stream of the training
    for name, net in (("generator", state.sampling_generator), ("energy", state.sampling_energy)):
        saved = load_torch(getattr(paths, name), name)
        assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items()), name
