"""The `cdgan` console script: help, one-line errors with exit code 1, nothing written on bad input; Ctrl-C and
SIGTERM stop it with the resume checkpoint kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from cdgan.cli import main
from cdgan.files import load_torch
from cdgan.params import Paths, TrainParams, load_params, parse_params
from cdgan.presets import load_preset
from tests.conftest import BIN, REPO, default_sigint, run, tiny_raw, wait_for_checkpoint


@pytest.mark.parametrize("command", ["prepare", "reference", "train", "evaluate", "register", "sample"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    main([command, "--help"])
    assert "--params" in capsys.readouterr().out


BAD_PARAMS = [
    ({"train": {"cd_k": -1}}, "train.cd_k"),
    ({"train": {"loss": "kl"}}, "train.loss"),
    ({"train": {"steps": "many"}}, "train.steps"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    ({"data": {"image_size": 10}}, "data.image_size"),
    ({"evaluate": {"n_smples": 10}}, "evaluate.n_smples"),
    ({"train": {"device": "tpu"}}, "train.device"),
]


@pytest.mark.parametrize(("override", "key"), BAD_PARAMS, ids=[key for _, key in BAD_PARAMS])
@pytest.mark.parametrize("command", ["prepare", "reference", "train", "evaluate", "register"])
def test_bad_param_is_one_clear_error_and_writes_nothing(
    command: str,
    override: dict,
    key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given a project directory whose params.yaml has one bad key
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw(**override)))

    # when a stage runs
    with pytest.raises(SystemExit) as exit_info:
        main([command])

    # then: exit 1, one line naming the key, and nothing written
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("cdgan: error: params.yaml:") and key in err, err
    assert err.count("\n") == 1, f"one line, no traceback: {err}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (["reference"], "data/prepared/dataset.npz"),
        (["train"], "data/prepared/dataset.npz"),
        (["evaluate"], "metrics/train.json"),
        (["register"], "metrics/train.json"),
    ],
)
def test_missing_inputs_name_the_file_and_the_fix(
    command: list[str],
    missing: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and missing in err and "dvc repro" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_corrupt_prepared_data_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    Path("data/prepared").mkdir(parents=True)
    Path("data/prepared/dataset.npz").write_bytes(b"not a zip file")
    with pytest.raises(SystemExit):
        main(["train"])
    err = capsys.readouterr().err
    assert "dataset.npz: corrupt" in err and "cdgan prepare" in err, err
    assert not Path("models").exists() and not Path("mlruns").exists()


def test_missing_params_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--params", "nope.yaml"])
    assert exit_info.value.code == 1 and "nope.yaml: params file not found" in capsys.readouterr().err


def test_params_apply_writes_the_preset_keeps_other_keys_and_lists_the_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project whose params.yaml (the repo's, comments and all) has one edit of the user's
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text((REPO / "params.yaml").read_text().replace("  batch_size: 64 ", "  batch_size: 32 "))
    # when
    main(["params", "apply", str(REPO / "presets" / "grid25.yaml")])
    # then the preset's keys are set, the edit and the comments stay, and each changed key is listed
    params = load_params("params.yaml")
    assert params.data.dataset == "grid25" and params.train.cd_k == 20 and params.train.batch_size == 32
    assert "# R1 gradient penalty" in Path("params.yaml").read_text()
    err = capsys.readouterr().err
    assert err.startswith("params.yaml: 14 keys changed by ") and '  data.dataset: "digits" -> "grid25"\n' in err, err
    assert "  train.cd_k: 1 -> 20\n" in err and "batch_size" not in err, err


def test_params_apply_bad_preset_is_one_line_naming_the_key_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a params.yaml and a preset with a misspelt key
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text((REPO / "params.yaml").read_text())
    Path("bad.yaml").write_text("train:\n  cd_kk: 5\n")
    before = Path("params.yaml").read_bytes()
    # when
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "apply", "bad.yaml"])
    # then: exit 1, one line naming the key, params.yaml byte-identical and nothing else written
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert err.startswith("cdgan: error: bad.yaml on params.yaml: train.cd_kk: Extra inputs") and err.count("\n") == 1
    assert Path("params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "params.yaml"]


def test_params_show_prints_the_validated_params_with_the_preset_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project with the repo's params.yaml
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text((REPO / "params.yaml").read_text())
    before = Path("params.yaml").read_bytes()
    # when
    main(["params", "show", str(REPO / "presets" / "ring8.yaml")])
    # then stdout is YAML of every key, the preset's values on params.yaml's, and params.yaml is not written
    shown = yaml.safe_load(capsys.readouterr().out)
    assert parse_params(shown) == load_preset(REPO / "presets" / "ring8.yaml", "params.yaml")
    assert set(shown["train"]) == set(TrainParams.model_fields), "every key, defaults filled in"
    assert shown["data"]["dataset"] == "ring8" and shown["sample"]["temperature"] == 0.0015
    assert Path("params.yaml").read_bytes() == before


def test_bad_flag_is_a_usage_error_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["params", "apply", "--bogus"])
    assert exit_info.value.code == 2 and "No such option: --bogus" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given prepared data and a tracking URI where nothing listens
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(tiny_raw(data={"dataset": "grid25", "n_points": 100})))
    main(["prepare"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")

    with pytest.raises(SystemExit) as exit_info:
        main(["train"])

    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "127.0.0.1:9 is unreachable" in err, err
    assert not Path("models").exists(), "no training output before the store is known to work"


def test_installed_console_script_runs(tmp_path: Path) -> None:
    result = run(["cdgan", "--help"], tmp_path)
    assert all(
        command in result.stdout for command in ("prepare", "reference", "train", "evaluate", "register", "sample")
    )
    bad = run(["cdgan", "train", "--params", "absent.yaml"], tmp_path, check=False)
    assert bad.returncode == 1 and "absent.yaml" in bad.stderr


@pytest.mark.parametrize(
    ("signum", "code", "line", "status"),
    [
        (signal.SIGINT, 130, "cdgan: interrupted", "FAILED"),  # Ctrl-C in a terminal
        (signal.SIGTERM, 143, "cdgan: terminated", "KILLED"),  # Prefect, `kill` or `systemctl stop`
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_exits_with_one_line_ends_the_run_and_the_rerun_resumes(
    signum: signal.Signals, code: int, line: str, status: str, tmp_path: Path, spawn: Callable
) -> None:
    # given a real `cdgan train` on its own SQLite store, past its first resume checkpoint
    raw = tiny_raw(
        data={"dataset": "grid25", "n_points": 2000},
        train={"steps": 200, "checkpoint_every": 5, "log_every": 100, "eval_every": 0, "cd_k": 1},
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MLFLOW_TRACKING_URI": uri}
    run(["cdgan", "prepare"], tmp_path)
    train = spawn(
        ["cdgan", "train"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    resume_dir = Paths(tmp_path).resume
    wait_for_checkpoint(train, resume_dir, seconds=300)  # imports and store creation: minutes on a busy machine

    # when it gets the signal
    train.send_signal(signum)
    _, err = train.communicate(timeout=120)

    # then: its exit code, one line saying so, the checkpoint kept, and the MLflow run ended, not RUNNING
    assert train.returncode == code, err
    assert err.strip().splitlines()[-1].startswith(line), err
    (checkpoint,) = resume_dir.glob("*.pt")
    run_id = load_torch(checkpoint)["meta"]["mlflow_run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == status

    # and a rerun resumes from the checkpoint (whose meta names the run), continuing that run to its end
    run(["cdgan", "train"], tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert json.loads((tmp_path / "metrics" / "train.json").read_text())["mlflow_run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not any(resume_dir.glob("*.pt")), "a finished run leaves no resume checkpoint"
