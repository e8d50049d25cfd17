"""Two pipelines at once on one machine: two project copies, two real `dvc repro`, one fresh SQLite MLflow store."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from cdgan import registry
from cdgan.store import store_lock
from tests.conftest import BIN, make_project, tiny_raw

DEADLINE_SECONDS = 900  # two tiny pipelines sharing a busy 2-core machine


def _poll(procs: dict[str, subprocess.Popen], ready: Callable[[], bool]) -> None:
    """Wait until `ready()`; fail with the pipelines' output if one ends first or time runs out."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not ready():
        ended = {name: proc for name, proc in procs.items() if proc.poll() is not None}
        assert not ended, {name: proc.communicate()[0][-3000:] for name, proc in ended.items()}
        assert time.monotonic() < deadline, "pipelines too slow"
        time.sleep(0.5)


def test_two_pipelines_at_once_on_one_store_keep_their_runs_and_the_better_is_champion(tmp_path: Path) -> None:
    # given two copies of the project that differ only in the training seed, and one store neither has opened
    name = f"cdgan-concurrent-{uuid.uuid4().hex[:8]}"
    store = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{store}"
    projects = {
        seed: make_project(tmp_path / f"seed{seed}", tiny_raw(train={"seed": seed}, register={"model_name": name}))
        for seed in (0, 1)
    }
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri,
           "OMP_NUM_THREADS": "1"}  # fmt: skip

    # when both run `dvc repro` at the same time, while this test holds the champion lock until both have
    # registered a version, so that their alias decisions surely overlap
    with store_lock(uri, f"alias-{name}"):
        procs = {
            f"seed{seed}": subprocess.Popen(
                ["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for seed, project in projects.items()
        }
        _poll(procs, store.exists)
        with store_lock(uri, "init"):  # the pipelines create the tables under this lock
            client = MlflowClient(uri)
            client.search_registered_models(max_results=1)

        def both_registered() -> bool:
            versions = client.search_model_versions(f"name = '{name}'")
            return len(versions) == 2 and all("forced" in v.tags for v in versions)

        _poll(procs, both_registered)
        assert client.get_registered_model(name).aliases == {}, "a pipeline moved the alias without the lock"
    outputs = {key: proc.communicate(timeout=DEADLINE_SECONDS)[0] for key, proc in procs.items()}

    # then both pipelines finished, each with its own MLflow run, in one experiment
    for key, proc in procs.items():
        assert proc.returncode == 0, outputs[key][-5000:]
    train = {seed: json.loads((p / "metrics" / "train.json").read_text()) for seed, p in projects.items()}
    runs = [client.get_run(t["mlflow_run_id"]) for t in train.values()]
    assert runs[0].info.run_id != runs[1].info.run_id
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert runs[0].info.experiment_id == runs[1].info.experiment_id

    # and each registered its own version from its own run
    registered = {seed: json.loads((p / "metrics" / "register.json").read_text()) for seed, p in projects.items()}
    assert {r["version"] for r in registered.values()} == {1, 2}
    for seed, reg in registered.items():
        version = client.get_model_version(name, str(reg["version"]))
        assert version.run_id == train[seed]["mlflow_run_id"], "a version points at the other pipeline's run"

    # and the champion is the version with the better (lower) FID, judged against the other, not alone
    fid = {seed: json.loads((p / "metrics" / "eval.json").read_text())["fid"] for seed, p in projects.items()}
    tags = {seed: client.get_model_version(name, str(reg["version"])).tags for seed, reg in registered.items()}
    assert tags[0]["data_sha256"] == tags[1]["data_sha256"], "test setup: both must train on the same data"
    assert fid[0] != fid[1], "test setup: the seeds must give different FIDs"
    best = min(fid, key=fid.get)
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert int(champion.version) == registered[best]["version"], (fid, registered)
    firsts = [seed for seed, t in tags.items() if t["alias_reason"] == "first version"]
    assert len(firsts) == 1, f"both saw an empty registry: {tags}"
    first = firsts[0]
    second_reason = tags[1 - first]["alias_reason"]
    assert f"champion v{registered[first]['version']} " in second_reason, second_reason
