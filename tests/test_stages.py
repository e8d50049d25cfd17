"""Stage functions as users run them: resume after a kill, divergence; each stage module run alone, as dvc.yaml
runs it, behind the same edge as the `cdgan` CLI."""

from __future__ import annotations

import importlib
import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cdgan.errors import CdganError
from cdgan.files import load_torch
from cdgan.params import Paths, parse_params
from cdgan.stages.edge import INTERRUPTED, TERMINATED, guarded
from cdgan.stages.prepare import prepare
from cdgan.stages.train import train
from tests.conftest import BIN, assert_same_weights, run, tiny_raw, wait_for_checkpoint

KILLABLE = {
    "data": {"dataset": "grid25", "n_points": 2000},
    "train": {"steps": 300, "checkpoint_every": 25, "eval_every": 150, "log_every": 50, "cd_k": 1},
}


def _project(root: Path, **sections: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_raw(**sections)))
    run(["cdgan", "prepare"], root)
    return root


def test_killed_training_resumes_to_bitwise_identical_weights(tmp_path: Path, mlflow_uri: str) -> None:
    # given the same project twice, one trained without interruption
    straight = _project(tmp_path / "straight", **KILLABLE)
    run(["cdgan", "train"], straight)

    # when the other is killed after its first checkpoint and then rerun
    resumed = _project(tmp_path / "resumed", **KILLABLE)
    proc = subprocess.Popen([BIN / "cdgan", "train"], cwd=resumed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_dir = Paths(resumed).resume
    wait_for_checkpoint(proc, resume_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed: raise steps"
    assert not Path(resumed / "models/generator.pt").exists()
    (checkpoint,) = resume_dir.glob("*.pt")
    killed_run_id = load_torch(checkpoint)["meta"]["mlflow_run_id"]
    second = run(["cdgan", "train"], resumed)

    # then it resumed, continued the same MLflow run, and ended with the same weights, bit for bit
    assert "resumed at" in second.stdout + second.stderr
    run_id = json.loads((resumed / "metrics/train.json").read_text())["mlflow_run_id"]
    assert run_id == killed_run_id, "the rerun opened a new MLflow run instead of continuing the killed one"
    client = MlflowClient(mlflow_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    logged_steps = {m.step for m in client.get_metric_history(run_id, "loss_e")}
    steps, every = KILLABLE["train"]["steps"], KILLABLE["train"]["log_every"]
    assert logged_steps == set(range(every, steps + 1, every)), "the continued run holds the loss of every logged step"
    for name in ("generator.pt", "energy.pt"):
        assert_same_weights(straight / "models" / name, resumed / "models" / name, f"{name} after resume")
    losses = (resumed / "plots/train/losses.csv").read_text().splitlines()
    assert len(losses) == 1 + steps // every, "loss history from before the kill is kept"
    assert not any(resume_dir.glob("*.pt")), "a finished run leaves no resume checkpoint"
    assert json.loads((resumed / "metrics/train.json").read_text())["steps"] == steps


def test_divergence_stops_with_the_step_and_the_likely_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    monkeypatch.chdir(tmp_path)
    params = parse_params(
        tiny_raw(
            data={"dataset": "grid25", "n_points": 500},
            train={"lr": 1e6, "steps": 200, "log_every": 10, "energy_reg": 0},
        )
    )
    prepare(params, Paths())
    before = _run_ids(mlflow_uri)
    with pytest.raises(CdganError, match=r"diverged at step \d+.*train.lr"):
        train(params, Paths())
    assert not Path("models/generator.pt").exists()
    # the run this test opened (other tests' runs share the store and the cdgan-grid25 experiment) ended FAILED
    (run_id,) = _run_ids(mlflow_uri) - before
    failed = MlflowClient(mlflow_uri).get_run(run_id)
    assert failed.info.status == "FAILED", "the MLflow run of a diverged training is marked FAILED"
    assert failed.data.params["train.lr"] == "1000000.0", "the run is this test's"


def _run_ids(uri: str) -> set[str]:
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(experiments, max_results=50_000)} if experiments else set()


DVC_STAGES = ("prepare", "reference", "train", "evaluate", "register")


@pytest.mark.parametrize("stage", DVC_STAGES)
def test_a_stage_module_run_alone_reads_params_and_fails_as_the_cli_does(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project whose params file has a bad key
    monkeypatch.chdir(tmp_path)
    Path("other.yaml").write_text(yaml.safe_dump(tiny_raw(train={"cd_k": -1})))
    main = importlib.import_module(f"cdgan.stages.{stage}").main

    # when the stage's module runs on it, as `python -m cdgan.stages.<stage> --params other.yaml`
    with pytest.raises(SystemExit) as exit_info:
        main(["--params", "other.yaml"])

    # then: exit 1, the CLI's one line naming the key, and nothing written
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("cdgan: error: ") and err.count("\n") == 1 and "train.cd_k" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.yaml"], "nothing written on bad params"


@pytest.mark.parametrize("stage", DVC_STAGES)
def test_a_stage_module_has_help_naming_its_command(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(f"cdgan.stages.{stage}").main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and f"python -m cdgan.stages.{stage}" in out and "--params" in out, out


def _raise(err: BaseException) -> None:
    raise err


@pytest.mark.parametrize(
    ("stop", "code", "line"),
    [
        (lambda: _raise(KeyboardInterrupt()), INTERRUPTED, "cdgan: interrupted"),  # Ctrl-C outside typer
        (lambda: INTERRUPTED, INTERRUPTED, "cdgan: interrupted"),  # typer returns the code for Ctrl-C
        (lambda: signal.raise_signal(signal.SIGTERM), TERMINATED, "cdgan: terminated"),
        (lambda: _raise(CdganError("params.yaml: train.cd_k must be >= 0")), 1, "cdgan: error: params.yaml"),
    ],
    ids=["ctrl-c", "typer-ctrl-c", "sigterm", "error"],
)
def test_the_edge_turns_each_stop_into_its_exit_code_and_one_line(
    stop: Callable[[], object], code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the SIGTERM handler outside the edge
    before = signal.getsignal(signal.SIGTERM)

    # when a command stops by Ctrl-C, SIGTERM or a user error inside it
    with pytest.raises(SystemExit) as exit_info:
        guarded(stop)

    # then the exit code a shell expects, one line saying why, and the outer handler back in place
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert err.startswith(line) and err.count("\n") == 1, err
    assert signal.getsignal(signal.SIGTERM) == before, "the edge restores the SIGTERM handler it replaced"
