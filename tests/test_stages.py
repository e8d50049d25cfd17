"""Stage functions as users run them: resume after a kill, divergence, device resolution."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from cdgan.errors import CdganError
from cdgan.params import Paths, parse_params
from cdgan.stages import prepare, resolve_device, streams, train
from tests.conftest import BIN, run, tiny_raw

KILLABLE = {
    "data": {"dataset": "grid25", "n_points": 2000},
    "train": {"steps": 600, "checkpoint_every": 25, "eval_every": 300, "log_every": 100, "cd_k": 1},
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
    deadline = time.monotonic() + 120
    while not any(resume_dir.glob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed: raise steps"
    assert not Path(resumed / "models/generator.pt").exists()
    second = run(["cdgan", "train"], resumed)

    # then it resumed, continued the same MLflow run, and ended with the same weights, bit for bit
    assert "resumed at" in second.stdout + second.stderr
    for name in ("generator.pt", "energy.pt"):
        a = torch.load(straight / "models" / name, weights_only=True)
        b = torch.load(resumed / "models" / name, weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    losses = (resumed / "plots/train/losses.csv").read_text().splitlines()
    steps = KILLABLE["train"]["steps"]
    assert len(losses) == 1 + steps // 100, "loss history from before the kill is kept"
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
    with pytest.raises(CdganError, match=r"diverged at step \d+.*train.lr"):
        train(params, Paths())
    assert not Path("models/generator.pt").exists()
    import mlflow

    runs = mlflow.search_runs(experiment_names=["cdgan-grid25"], filter_string="attributes.status = 'FAILED'")
    assert len(runs) >= 1, "the MLflow run is marked FAILED"


def test_device_auto_is_cuda_when_present_and_cuda_without_gpu_is_refused() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(CdganError, match=r"train\.device=cuda"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("data_loading", "device", "mb", "expected"),
    [
        ("auto", "cpu", 10_000, False),  # host memory holds it already: a tensor on it is free
        ("auto", "cuda", 100, False),
        ("auto", "cuda", 3000, True),  # past device_data_mb (2048)
        ("stream", "cpu", 1, True),
        ("device", "cuda", 10_000, False),
    ],
)
def test_batches_stream_when_asked_or_when_the_data_would_crowd_the_gpu(
    data_loading: str, device: str, mb: int, expected: bool
) -> None:
    params = parse_params(tiny_raw(train={"data_loading": data_loading})).train
    assert streams(params, mb * 2**20, torch.device(device)) is expected
