"""End to end: `dvc repro` of the four stages in a fresh git + DVC project, MLflow, and `cdgan sample`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from cdgan.data import load_dataset
from cdgan.params import Paths, load_params
from cdgan.reference import build_scorer
from cdgan.sampler import draw_samples
from cdgan.stages.trained import load_trained
from tests.conftest import REPO, run

STAGES = ("prepare", "reference", "train", "evaluate", "register")


def test_dvc_yaml_declares_the_stages_with_paths_as_in_code() -> None:
    # given the project's dvc.yaml and the fixed Paths
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    paths = Paths()

    # then stage names, commands and outputs agree with the code
    assert tuple(stages) == STAGES
    assert all(stage["cmd"] == f"python -m cdgan.stages.{name}" for name, stage in stages.items())

    def declared(stage: str, key: str) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o for o in stages[stage].get(key, [])}

    assert declared("prepare", "outs") == {str(paths.prepared)}
    assert declared("train", "outs") >= {str(paths.generator), str(paths.energy), str(paths.checkpoint)}
    assert declared("train", "metrics") == {str(paths.train_metrics)}
    assert declared("reference", "outs") == {str(paths.reference_metrics)}
    assert str(paths.reference_metrics) in declared("evaluate", "deps")
    assert declared("evaluate", "metrics") == {str(paths.eval_metrics)}
    assert declared("register", "metrics") == {str(paths.register_metrics)}
    assert str(paths.dataset.parent) in declared("train", "deps")


def test_repro_writes_every_output(dvc_paths: Paths) -> None:
    for path in (dvc_paths.dataset, dvc_paths.classifier, dvc_paths.generator, dvc_paths.energy, dvc_paths.checkpoint):
        assert path.stat().st_size > 0, f"{path} missing or empty"
    assert (dvc_paths.eval_plots / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    losses = (dvc_paths.train_plots / "losses.csv").read_text().splitlines()
    assert losses[0].split(",")[:3] == ["step", "loss_e", "e_real"]
    assert len(losses) == 1 + 20 // 5, "one row per log_every step"
    scores = (dvc_paths.train_plots / "scores.csv").read_text().splitlines()
    assert scores[0] == "step,fid" and len(scores) == 1 + 20 // 10


def test_fid_during_training_scores_as_many_samples_as_evaluate(dvc_paths: Paths) -> None:
    # given the trained tiny project (evaluate.n_samples 200, a score at the last step, 20) and its own scorer
    params = load_params(dvc_paths.root / "params.yaml")
    real = load_dataset(dvc_paths.dataset)
    generator, energy = load_trained(params, dvc_paths, real.shape)
    scorer = build_scorer(params.data.dataset, real, dvc_paths.classifier)
    last = float((dvc_paths.train_plots / "scores.csv").read_text().splitlines()[-1].split(",")[1])

    def fid_of(n: int) -> float:
        return scorer(draw_samples(generator, energy, n, params.train.seed))["fid"]

    # then the last score is the FID of evaluate.n_samples samples of the saved generator, which another count
    # would not give (FID's bias depends on it)
    assert params.evaluate.n_samples == 200
    assert last == pytest.approx(fid_of(200), rel=1e-5)
    assert last != pytest.approx(fid_of(100), rel=1e-3)


def test_repro_then_status_is_clean_and_second_repro_does_nothing(dvc_repo: Path) -> None:
    status = run(["dvc", "status"], dvc_repo)
    assert "up to date" in status.stdout, status.stdout
    outputs = ("metrics/eval.json", "models/generator.pt", "data/prepared/dataset.npz")
    before = {out: ((dvc_repo / out).stat().st_mtime_ns, (dvc_repo / out).read_bytes()) for out in outputs}
    lock = (dvc_repo / "dvc.lock").read_bytes()
    again = run(["dvc", "repro"], dvc_repo)
    assert all(f"Stage '{stage}' didn't change, skipping" in again.stdout for stage in STAGES), again.stdout
    assert {out: ((dvc_repo / out).stat().st_mtime_ns, (dvc_repo / out).read_bytes()) for out in outputs} == before
    assert (dvc_repo / "dvc.lock").read_bytes() == lock


# The stages `dvc status` names after an edit to one file: those whose own module imports it, directly or not.
# The FID reference (reference.py) is prepare's, which saves it, train's, which scores against it, and
# reference's and evaluate's, which load it; the metric suite (evaluation.py) is reference's and evaluate's, and
# evaluate reads the reference stage's file through its module; the ranking (ranking.py) is
# train's, which logs its best checkpoint by it, and register's, whose champion gate ranks by it; the losses
# reach every stage that imports the sampler (Langevin); pictures draw train's and evaluate's sample grids.
EDITS = {
    "src/cdgan/registry.py": {"register"},
    "src/cdgan/pictures.py": {"train", "evaluate"},
    "src/cdgan/train.py": {"train"},
    "src/cdgan/store.py": {"train", "evaluate", "register"},
    "src/cdgan/reference.py": {"prepare", "reference", "train", "evaluate"},
    "src/cdgan/evaluation.py": {"reference", "evaluate"},
    "src/cdgan/stages/reference.py": {"reference", "evaluate"},
    "src/cdgan/ranking.py": {"train", "register"},
    "src/cdgan/losses.py": {"reference", "train", "evaluate", "register"},
}


@pytest.fixture(scope="module")
def project_copy(dvc_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the reproduced project for edits (the fixture's own is never mutated); each test restores it."""
    return shutil.copytree(dvc_repo, tmp_path_factory.mktemp("edits") / "project", symlinks=True)


def status_with(project: Path, path: str, edited: bytes) -> dict[str, list[dict]]:
    """What `dvc status --json` says of `project` while its file `path` holds `edited`; the file is restored."""
    file = project / path
    original = file.read_bytes()
    file.write_bytes(edited)
    try:
        return json.loads(run(["dvc", "status", "--json"], project).stdout)
    finally:
        file.write_bytes(original)


def changed_deps(status: dict[str, list[dict]], stage: str) -> list[dict]:
    return [entry["changed deps"] for entry in status[stage] if "changed deps" in entry]


@pytest.mark.parametrize(("path", "stages"), EDITS.items(), ids=list(EDITS))
def test_a_code_edit_reruns_exactly_the_stages_that_import_it(project_copy: Path, path: str, stages: set[str]) -> None:
    # given the reproduced project with one comment line appended to one source file, when DVC compares it with
    # dvc.lock
    status = status_with(project_copy, path, (project_copy / path).read_bytes() + b"\n# an edit\n")

    # then it names exactly those stages, each for that file alone
    assert set(status) == stages, f"{path}: {sorted(status)}"
    assert all(changed_deps(status, stage) == [{path: "modified"}] for stage in stages), status


# The stages `dvc status` names after one params key changes: those whose code reads it (train scores its FID
# history on evaluate.n_samples draws, so that key is train's too; the reference points are scored at it).
PARAM_EDITS = {
    "data.classifier_epochs": ({"prepare"}, 2),
    "train.lr": ({"train"}, 0.0015),
    "evaluate.n_samples": ({"reference", "train", "evaluate"}, 150),
    "model.z_dim": ({"train", "evaluate", "register"}, 8),
    "sample.langevin_steps": ({"evaluate", "register"}, 3),
    "register.min_improvement": ({"register"}, 0.5),
}


@pytest.mark.parametrize(("key", "stages", "value"), [(k, *v) for k, v in PARAM_EDITS.items()], ids=list(PARAM_EDITS))
def test_a_params_edit_reruns_exactly_the_stages_that_read_the_key(
    project_copy: Path, key: str, stages: set[str], value: object
) -> None:
    # given the reproduced project with one params key changed, when DVC compares it with dvc.lock
    raw = yaml.safe_load((project_copy / "params.yaml").read_text())
    section, name = key.split(".")
    assert raw[section][name] != value, "test setup: the edit must change the key"
    raw[section][name] = value
    status = status_with(project_copy, "params.yaml", yaml.safe_dump(raw, sort_keys=False).encode())

    # then it names exactly the stages that read the key, each for that key alone (or the section holding it,
    # where the stage tracks a whole section)
    assert set(status) == stages, f"{key}: {sorted(status)}"
    named = ([{"params.yaml": {key: "modified"}}], [{"params.yaml": {section: "modified"}}])
    assert all(changed_deps(status, stage) in named for stage in stages), status


def test_the_project_s_default_remote_is_a_folder_beside_the_checkout() -> None:
    remotes = run(["dvc", "remote", "list"], REPO).stdout.split()
    assert run(["dvc", "remote", "default"], REPO).stdout.strip() == "local"
    assert remotes[remotes.index("local") + 1] == str(REPO.parent / "cdgan-dvc-remote")


def test_push_then_pull_in_a_fresh_clone_gives_the_same_outputs(dvc_repo: Path, tmp_path: Path) -> None:
    # given a copy of the reproduced project, committed, with a local remote as the project's default
    project = shutil.copytree(dvc_repo, tmp_path / "project", symlinks=True)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "remote")], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "outputs and remote"], project)

    # when it pushes, and a fresh clone pulls
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)

    # then the clone has every output byte for byte, and nothing to reproduce
    for out in ("data/prepared/dataset.npz", "data/prepared/classifier.pt", "models/generator.pt", "models/energy.pt"):
        assert (clone / out).read_bytes() == (project / out).read_bytes(), out
    status = run(["dvc", "status", "--json"], clone).stdout
    assert json.loads(status) == {}, f"a pulled clone should be up to date: {status}"


def test_metrics_have_fid_and_the_mlflow_run_id(dvc_repo: Path, dvc_paths: Paths) -> None:
    evaluation = json.loads(dvc_paths.eval_metrics.read_text())
    assert np.isfinite(evaluation["fid"]) and evaluation["fid"] >= 0
    assert evaluation["mlflow_run_id"] == json.loads(dvc_paths.train_metrics.read_text())["mlflow_run_id"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)
    assert shown[""]["data"]["metrics/eval.json"]["data"]["fid"] == pytest.approx(evaluation["fid"])


def test_mlflow_run_has_params_metrics_picture_and_lineage(dvc_repo: Path, dvc_paths: Paths, mlflow_uri: str) -> None:
    run_id = json.loads(dvc_paths.train_metrics.read_text())["mlflow_run_id"]
    client = MlflowClient(mlflow_uri)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["train.loss"] == "cd" and got.data.params["train.cd_k"] == "2"
    assert {"fid", "train/fid", "loss_e", "loss_g", "grad_norm_g"} <= set(got.data.metrics)
    assert len(client.get_metric_history(run_id, "loss_e")) == 20 // 5, "per-step losses"
    assert [m.step for m in client.get_metric_history(run_id, "train/fid")] == [10, 20], "FID over training"
    evaluated = json.loads(dvc_paths.eval_metrics.read_text())["fid"]
    assert got.data.metrics["fid"] == pytest.approx(evaluated), "the run's fid is evaluate's, not training's last"
    commit = run(["git", "rev-parse", "HEAD"], dvc_repo).stdout.strip()
    assert got.data.tags["git_commit"] == commit
    assert got.data.tags["host.cpu_capability"] == torch.backends.cpu.get_cpu_capability(), "the kernels it ran on"
    artifacts = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert "samples/samples.png" in artifacts


def test_registered_version_is_champion_and_samples_have_the_documented_shape(
    dvc_repo: Path, dvc_paths: Paths, mlflow_uri: str, tmp_path: Path
) -> None:
    register = json.loads(dvc_paths.register_metrics.read_text())
    version = MlflowClient(mlflow_uri).get_model_version_by_alias("cdgan-dvc-test", "champion")
    assert int(version.version) == register["version"] and register["alias"] == "champion"

    out = tmp_path / "samples.npy"
    run(["cdgan", "sample", "--n", "7", "--seed", "3", "--out", str(out)], dvc_repo)
    x = np.load(out)
    assert x.shape == (7, 1, 8, 8) and x.min() >= -1 and x.max() <= 1

    again = tmp_path / "again.npy"
    run(
        ["cdgan", "sample", "--n", "7", "--seed", "3", "--out", str(again), "--generator", "models/generator.pt"],
        dvc_repo,
    )
    np.testing.assert_allclose(np.load(again), x, atol=1e-6, err_msg="registered model and local files disagree")


def test_pyfunc_loads_by_alias(dvc_repo: Path, mlflow_uri: str) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pyfunc.load_model("models:/cdgan-dvc-test@champion")
    import pandas as pd

    x = model.predict(pd.DataFrame({"n": [3, 2], "seed": [0, 1]}))
    assert x.shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(model.predict(pd.DataFrame({"n": [3], "seed": [0]})), x[:3])
