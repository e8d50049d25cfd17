"""DVC experiments as the everyday workflow: a queued grid run by two workers in DVC's temporary copies, with
the MLflow store and resume checkpoints in the project, `dvc exp show` columns, the champion gate across
parallel registrations, `dvc exp apply`, and `dvc exp push` / `dvc exp pull` through a local remote."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import make_project, run, tiny_raw

MODEL = "cdgan-exp-test"
LOSSES = ("cd", "bce")
QUEUE_SECONDS = 900  # two tiny pipelines in parallel: about 2 min on a busy 2-core machine
NO_SERVER = {"MLFLOW_TRACKING_URI": ""}  # the project's own store, as a user without a server has it
# about 4 min on a busy 2-core machine (the queue runs two whole tiny pipelines); the fast tier covers where
# the stores go inside an experiment in tests/test_tracking.py
pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Experiments:
    project: Path
    remote: Path  # the project's default DVC remote, a local directory
    origin: Path  # a bare git repository, the project's git remote
    by_loss: dict[str, dict[str, Any]]  # train.loss -> {"name", "rev", "params", "metrics"} from `dvc exp show`

    @property
    def store(self) -> str:
        return f"sqlite:///{self.project / 'mlruns' / 'mlflow.db'}"


def shown_experiments(project: Path) -> list[dict[str, Any]]:
    """Every experiment in `dvc exp show --json`: name, rev, params.yaml values and metrics files' values."""
    found = []
    for baseline in json.loads(run(["dvc", "exp", "show", "--json"], project).stdout):
        for experiment in baseline.get("experiments") or []:
            head = experiment["revs"][0]
            data = head["data"]
            found.append({
                "name": head["name"],
                "rev": head["rev"],
                "params": data["params"]["params.yaml"]["data"],
                "metrics": {path: values["data"] for path, values in (data.get("metrics") or {}).items()},
            })  # fmt: skip
    return found


def wait_for_queue(project: Path) -> None:
    deadline = time.monotonic() + QUEUE_SECONDS
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], project).stdout
        if not any(state in status for state in ("Queued", "Running")):
            failed = [line.split()[1] for line in status.splitlines() if line.rstrip().endswith("Failed")]
            if failed:
                logs = run(["dvc", "queue", "logs", failed[0]], project, check=False).stdout
                raise AssertionError(f"queued experiments failed:\n{status}\n{failed[0]}:\n{logs[-4000:]}")
            return
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {QUEUE_SECONDS}s:\n{status}")


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Experiments]:
    """A tiny project with a local DVC remote and a git origin, then the grid train.loss=cd,bce queued and run
    by `dvc queue start -j 2` (each experiment in its own copy under .dvc/tmp/exps)."""
    base = tmp_path_factory.mktemp("exp")
    project = make_project(base / "project", tiny_raw(register={"model_name": MODEL}))
    remote, origin = base / "dvc-remote", base / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], base)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], project)
    run(["git", "commit", "-qam", "local DVC remote"], project)
    run(["git", "push", "-q", "origin", "HEAD"], project)

    run(["dvc", "exp", "run", "--queue", "-S", f"train.loss={','.join(LOSSES)}"], project)
    try:
        run(["dvc", "queue", "start", "-j", "2"], project, env=NO_SERVER)
        wait_for_queue(project)
        shown = shown_experiments(project)
        yield Experiments(project, remote, origin, {e["params"]["train"]["loss"]: e for e in shown})
    finally:
        run(["dvc", "queue", "stop", "--kill"], project, check=False)


def test_queued_experiments_log_into_the_project_s_store_not_their_temporary_copies(experiments: Experiments) -> None:
    # given the two queued experiments, each run in a copy of the project that DVC deleted afterwards
    assert set(experiments.by_loss) == set(LOSSES), f"dvc exp show lists {sorted(experiments.by_loss)}"

    # then both MLflow runs are in the project's store, tagged with their experiment's name and baseline
    client = MlflowClient(experiments.store)
    baseline = run(["git", "rev-parse", "HEAD"], experiments.project).stdout.strip()
    for loss, shown in experiments.by_loss.items():
        run_id = shown["metrics"]["metrics/train.json"]["mlflow_run_id"]
        got = client.get_run(run_id)  # raises if the run went to the deleted copy's mlruns/
        assert got.info.status == "FINISHED"
        assert got.data.params["train.loss"] == loss
        assert got.data.tags["dvc_exp_name"] == shown["name"]
        assert got.data.tags["dvc_exp_baseline_rev"] == baseline
        assert got.data.metrics["fid"] == pytest.approx(shown["metrics"]["metrics/eval.json"]["fid"])
    # and the resume checkpoints had their folder in the project (training deletes the file when it ends)
    assert (experiments.project / ".cdgan" / "resume").is_dir()


def test_exp_show_has_fid_modes_and_params_columns(experiments: Experiments) -> None:
    # given the table `dvc exp show --csv` prints
    rows = {
        row["Experiment"]: row
        for row in csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], experiments.project).stdout))
    }
    for loss, shown in experiments.by_loss.items():
        # then each experiment's row holds the values its own commit holds: params.yaml, eval.json and the
        # dvc.lock that recorded them
        committed = {name: run(["git", "show", f"{shown['rev']}:{name}"], experiments.project).stdout
                     for name in ("params.yaml", "metrics/eval.json", "dvc.lock")}  # fmt: skip
        params = yaml.safe_load(committed["params.yaml"])
        evaluation = json.loads(committed["metrics/eval.json"])
        row = rows[shown["name"]]
        assert float(row["fid"]) == pytest.approx(evaluation["fid"]) and float(row["modes"]) == evaluation["modes"]
        assert row["train.loss"] == params["train"]["loss"] == loss
        assert int(row["train.cd_k"]) == params["train"]["cd_k"] and int(row["train.seed"]) == params["train"]["seed"]
        locked = yaml.safe_load(committed["dvc.lock"])["stages"]["train"]["params"]["params.yaml"]
        assert locked["train"]["loss"] == loss, "dvc.lock recorded the experiment's own params"


def test_every_experiment_registers_and_the_champion_is_the_better_one(experiments: Experiments) -> None:
    # given the two experiments' versions, registered in parallel by the two queue workers
    client = MlflowClient(experiments.store)
    versions = {v.tags["dvc_exp_name"]: v for v in client.search_model_versions(f"name='{MODEL}'")}
    assert set(versions) == {e["name"] for e in experiments.by_loss.values()}, "one version per experiment"

    # then the champion is the one with the lower FID, whichever registered first, and each experiment's
    # metrics/register.json says what happened to it
    fids = {e["name"]: e["metrics"]["metrics/eval.json"]["fid"] for e in experiments.by_loss.values()}
    best = min(fids, key=fids.get)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["dvc_exp_name"] == best, (fids, champion.tags["alias_reason"])
    # (register.json records the alias its version took when it registered: the worse one was champion too if it
    # registered first, before the better one took the alias from it)
    best_version = int(versions[best].version)
    for shown in experiments.by_loss.values():
        register = shown["metrics"]["metrics/register.json"]
        version = int(versions[shown["name"]].version)
        assert register["is_champion"] == (shown["name"] == best or version < best_version), (register, fids)
        assert int(register["version"]) == version


def test_exp_apply_brings_back_an_experiment_s_params_and_outputs(experiments: Experiments, tmp_path: Path) -> None:
    # given a copy of the project (the fixture's is shared) and the bce experiment
    project = shutil.copytree(experiments.project, tmp_path / "project", symlinks=True)
    chosen = experiments.by_loss["bce"]

    # when it is applied to the workspace
    run(["dvc", "exp", "apply", chosen["name"]], project)

    # then params.yaml and the metrics are the experiment's, and its outputs are checked out
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["loss"] == "bce"
    evaluation = json.loads((project / "metrics" / "eval.json").read_text())
    assert evaluation["fid"] == chosen["metrics"]["metrics/eval.json"]["fid"]
    status = run(["dvc", "status", "--json"], project, env=NO_SERVER).stdout
    assert json.loads(status) == {}, f"applied workspace not up to date: {status}"


def test_exp_push_and_pull_carry_an_experiment_to_a_fresh_clone(experiments: Experiments, tmp_path: Path) -> None:
    # given the cd experiment pushed to the git origin and the project's local DVC remote
    chosen = experiments.by_loss["cd"]
    run(["dvc", "exp", "push", "origin", chosen["name"]], experiments.project)
    assert any(experiments.remote.rglob("*")), "dvc exp push put no data in the DVC remote"

    # when a fresh clone pulls it and applies it
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(experiments.origin), str(clone)], tmp_path)
    run(["dvc", "exp", "pull", "origin", chosen["name"]], clone)
    run(["dvc", "exp", "apply", chosen["name"]], clone)

    # then the clone has the experiment's trained generator, byte for byte as dvc.lock pins it
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    pinned = {out["path"]: out["md5"] for out in lock["stages"]["train"]["outs"]}
    generator = clone / "models" / "generator.pt"
    assert hashlib.md5(generator.read_bytes()).hexdigest() == pinned["models/generator.pt"]
    assert (
        json.loads((clone / "metrics" / "eval.json").read_text())["fid"]
        == (chosen["metrics"]["metrics/eval.json"]["fid"])
    )
