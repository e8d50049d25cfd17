"""The flows' console scripts (pipelines/cli.py): installed beside `cdgan`, behind its error edge, their params
checked before any flow starts. The flows themselves are tested in test_flows.py and test_tune.py, and a script
that fails inside its flow in test_dask.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines import cli
from tests.conftest import BIN, run, tiny_raw

SCRIPTS = {  # each installed script and every option it has
    "cdgan-pipeline": ["--params", "--project", "--set"],
    "cdgan-sweep": ["--grid", "--set", "--name", "--cluster", "--params", "--project"],
    "cdgan-tune": ["--space", "--trials", "--name", "--params", "--project", "--storage", "--set", "--cluster"],
}
MAINS: dict[str, Callable[[list[str]], None]] = {
    "cdgan-pipeline": cli.pipeline_main,
    "cdgan-sweep": cli.sweep_main,
    "cdgan-tune": cli.tune_main,
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with tiny params, a search space and a dvc.yaml: enough for the scripts' checks,
    which all come before a flow would run DVC in it."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw(), sort_keys=False))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def fails(main: Callable[[list[str]], None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a script's main in this process, expecting `cdgan: error: ...`: one line on stderr, nothing on stdout,
    exit 1. Returns the message after the prefix."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 1, err
    assert out == "" and len(err.splitlines()) == 1, f"stdout: {out!r}\nstderr: {err!r}"
    assert err.startswith("cdgan: error: "), err
    return err.strip().removeprefix("cdgan: error: ")


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_is_installed_with_its_options(script: str, tmp_path: Path) -> None:
    # when the installed script is asked for help outside the repository, with nothing on PYTHONPATH
    result = run([str(BIN / script), "--help"], tmp_path, env={"PYTHONPATH": ""})

    # then it answers from the installed package, and names every option it has
    missing = [option for option in SCRIPTS[script] if option not in result.stdout]
    assert not missing, f"{script} --help lacks {missing}:\n{result.stdout}"


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["train.loss"], r"^--grid 'train\.loss': expected KEY=V1,V2"),
        (["=cd,bce"], r"^--grid '=cd,bce': expected KEY=V1,V2"),
        (["train.loss=[cd"], r"^'train\.loss=\[cd': '\[cd' is not a YAML value \(expected"),
        (["train.seed=0", "train.seed=1"], r"^--grid train\.seed: given twice"),
        (["train.cd_k=1,-1"], r"^sweep trial cd_k=-1: train\.cd_k: .*greater than or equal to 0"),
        (["data.dataset=digits,grid25"], r"all trials must share data\.dataset"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_a_bad_grid_is_one_error_line_before_anything_starts(
    grid: list[str], message: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the sweep is given a --grid it cannot read or whose values break the params
    error = fails(cli.sweep_main, [*(a for item in grid for a in ("--grid", item)), "--project", str(project)], capsys)

    # then the line says what is wrong, and no trial workspace or report was made
    assert re.search(message, error), error
    assert not (project / "sweeps").exists() and not (project / "reports").exists()


def test_cluster_without_grid_is_a_usage_error(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # when the sweep gets a cluster but no grid
    with pytest.raises(SystemExit) as exit_info:
        cli.sweep_main(["--cluster", "tcp://127.0.0.1:8786", "--project", str(project)])

    # then it is a usage error, as a bad flag of `cdgan` is: usage line, the missing option, exit 2
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("Usage: cdgan-sweep [OPTIONS]") and "Missing option '--grid'" in err, err


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_unknown_flag_is_a_usage_error(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        MAINS[script](["--grids", "train.seed=0,1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"Usage: {script} [OPTIONS]" in err and "No such option: --grids" in err


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_set_without_a_value_or_out_of_bounds_is_one_error_line(
    script: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = ["--grid", "train.seed=0,1"] if script == "cdgan-sweep" else []
    space = ["--space", "space.yaml"] if script == "cdgan-tune" else []
    before = (project / "params.yaml").read_text()

    # when --set has no value, then the line says what --set expects
    error = fails(MAINS[script], [*grid, *space, "--set", "train.steps", "--project", str(project)], capsys)
    assert error == "--set 'train.steps': expected KEY=VALUE, e.g. train.cd_k=5"

    # when --set breaks a bound, then the line names the key, and params.yaml is untouched
    error = fails(MAINS[script], [*grid, *space, "--set", "train.steps=0", "--project", str(project)], capsys)
    assert re.search(r"train\.steps: Input should be greater than 0", error), error
    assert (project / "params.yaml").read_text() == before
    assert not (project / "sweeps").exists() and not (project / "metrics").exists()


def test_a_missing_params_file_is_one_error_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    error = fails(cli.pipeline_main, ["--params", "absent.yaml", "--project", str(project)], capsys)
    assert error.startswith(f"{project / 'absent.yaml'}: params file not found"), error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "absent.yaml"], r"absent\.yaml: search space file not found"),
        (["--space", "space.yaml", "--trials", "0"], r"^cdgan-tune: trials must be >= 1 \(got 0\)$"),
        (["--space", "space.yaml", "--set", "train.lr=-1"], r"train\.lr"),
    ],
)
def test_a_study_that_cannot_run_is_one_error_line_before_its_storage(
    argv: list[str], message: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    error = fails(cli.tune_main, [*argv, "--project", str(project)], capsys)
    assert re.search(message, error), error
    assert not (project / "sweeps").exists(), "no study storage or trial workspace"


def test_values_are_read_as_yaml() -> None:
    # a --grid value splits at commas, each a YAML scalar; a --set value is one YAML value, the last one of a key
    assert cli.parse_grid(["train.loss=cd,bce", "train.lr=0.001,0.002"]) == {
        "train.loss": ["cd", "bce"],
        "train.lr": [0.001, 0.002],
    }
    overrides = cli.parse_assignments(["train.cd_k=5", "train.loss=cd,bce", "train.cd_k=10", "train.amp=true"])
    assert overrides == {"train.cd_k": 10, "train.loss": "cd,bce", "train.amp": True}


def test_the_scripts_wait_longer_for_prefects_temporary_server_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as TIMEOUT
    from prefect.settings import temporary_settings

    # given no setting of the user's: the scripts wait EPHEMERAL_START_SECONDS, Prefect's own default after
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    default = TIMEOUT.value()
    with cli.patient_ephemeral_server():
        assert TIMEOUT.value() == cli.EPHEMERAL_START_SECONDS > default
    assert TIMEOUT.value() == default

    # given the user's own setting, as a process started with it has it (Prefect reads the environment at import)
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")
    with temporary_settings({TIMEOUT: 7}), cli.patient_ephemeral_server():
        assert TIMEOUT.value() == 7, "the user's setting stands"
