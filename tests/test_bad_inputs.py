"""Bad inputs, as a careless user types them: each gives one clear line, a non-zero exit and writes nothing.

One row per input; a new case joins `CASES` in one line: its name, the command, the line's expected part, and what
to set up (params.yaml overrides or raw text, environment, files in the project).
"""

from __future__ import annotations

import resource
import signal
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from cdgan.cli import main
from cdgan.errors import CdganError
from cdgan.files import write_atomic
from tests.conftest import tiny_raw

USAGE = 2  # click's exit code for a bad command or flag
ERROR = 1  # a CdganError
WRITTEN = ("models", "metrics", "plots", "out.npy")  # what a command must not leave behind on bad input


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    expected: str  # part of the last line of stderr
    params: dict | str = field(default_factory=dict)  # overrides of the tiny params, or params.yaml's raw text
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # project files written before the command
    code: int = ERROR


INT, FLOAT, BOOL = (
    "Input should be a valid integer",
    "Input should be a valid number",
    "Input should be a valid boolean",
)
BAD_YAML = "params.yaml: not valid YAML"
SAMPLE = ["sample", "--out", "out.npy"]
CASES = [
    Case("mistyped command", ["trian"], "No such command 'trian'", code=USAGE),
    Case("unknown flag", ["train", "--steps", "10"], "No such option: --steps", code=USAGE),
    Case("flag not a number", [*SAMPLE, "--n", "abc"], "Invalid value for '--n'", code=USAGE),
    Case("missing flag", ["sample"], "Missing option '--out'", code=USAGE),
    Case("zero samples", [*SAMPLE, "--n", "0"], "--n must be > 0"),
    Case("negative samples", [*SAMPLE, "--n", "-5"], "--n must be > 0"),
    Case("bool for an int", ["train"], f"train.steps: {INT}", {"train": {"steps": True}}),
    Case("string for an int", ["train"], f"train.steps: {INT}", {"train": {"steps": "10"}}),
    Case("float for an int", ["train"], f"train.batch_size: {INT}", {"train": {"batch_size": 8.5}}),
    Case("string for a float", ["train"], f"train.lr: {FLOAT}", {"train": {"lr": "fast"}}),
    Case("bool for a float", ["train"], f"train.lr: Value error, {FLOAT}", {"train": {"lr": True}}),
    Case("int for a bool", ["train"], f"train.amp: {BOOL}", {"train": {"amp": 1}}),
    Case("string for a bool", ["train"], f"data.download: {BOOL}", {"data": {"download": "yes"}}),
    Case("empty params.yaml", ["train"], "params.yaml: empty", ""),
    Case("only comments", ["train"], "params.yaml: empty", "# nothing yet\n"),
    Case("section not a mapping", ["train"], "train: Input should be a valid dictionary", "train: 10\n"),
    Case("key twice", ["train"], f"{BAD_YAML} (steps is written twice at line 3", "train:\n  steps: 1\n  steps: 2\n"),
    Case("section twice", ["train"], f"{BAD_YAML} (train is written twice at line 2", "train: {}\ntrain: {}\n"),
    Case("not YAML", ["train"], BAD_YAML, "train: [steps\n"),
    Case("absurd langevin step", ["train"], "train.langevin_step_size: Input should be less than or equal to 10",
         {"train": {"langevin_step_size": 1e9}}),
    Case("absurd sample step", ["train"], "sample.step_size", {"sample": {"step_size": 1e9}}),
    Case("infinite float", ["train"], "train.energy_reg: Input should be a finite", "train:\n  energy_reg: .inf\n"),
    Case("nan float", ["train"], "sample.temperature: Input should be a finite", "sample:\n  temperature: .nan\n"),
    Case("negative steps", ["train"], "train.steps: Input should be greater than 0", {"train": {"steps": -10}}),
    Case("unknown key", ["train"], "train.stepz: Extra inputs are not permitted", {"train": {"stepz": 10}}),
    Case("unknown section", ["train"], "trian: Extra inputs are not permitted", {"trian": {"steps": 10}}),
    Case("unknown dataset", ["prepare"], "data.dataset: Input should be", {"data": {"dataset": "imagenet"}}),
    Case("wrong type in a list", ["evaluate"], "evaluate.metrics.1: Input", {"evaluate": {"metrics": ["fid", 3]}}),
    Case("list for a scalar", ["train"], f"train.lr: {FLOAT}", {"train": {"lr": [0.1]}}),
    Case("missing params file", ["train", "--params", "nope.yaml"], "nope.yaml: params file not found"),
    Case("params path is a folder", ["train", "--params", "."], ".: cannot read the params file (Is a directory)"),
    Case("params not a mapping", ["train"], "params.yaml: expected a mapping of sections", "- train\n- model\n"),
    Case("params not text", ["train"], "params.yaml: not a UTF-8 text file", files={"params.yaml": b"\xff\xfe\x00"}),
    Case("missing preset", ["params", "apply", "nope.yaml"], "nope.yaml"),
    Case("model uri without out", ["evaluate", "--model-uri", "models:/cdgan/1"], "--model-uri and --out go together"),
    Case("generator without data", [*SAMPLE, "--generator", "nope.pt"], "dataset.npz: prepared data not found"),
    Case("bad critic steps", ["probe", "--critic-steps", "ten"], "--critic-steps: expected comma-separated integers"),
    Case("unknown probe loss", ["probe", "--losses", "kl"], "kl"),
    Case("bogus tracking URI", SAMPLE, "MLFLOW_TRACKING_URI=bogus://nowhere: not a store",
         env={"MLFLOW_TRACKING_URI": "bogus://nowhere"}),
    Case("store folder unmakeable", SAMPLE, "cannot open the MLflow store sqlite:////proc/nope/mlflow.db",
         env={"MLFLOW_TRACKING_URI": "sqlite:////proc/nope/mlflow.db"}),
    Case("store without its driver", SAMPLE, "cannot open the MLflow store mysql://cdgan:***@127.0.0.1:9/db",
         env={"MLFLOW_TRACKING_URI": "mysql://cdgan:secret@127.0.0.1:9/db"}),
    Case("store not a database", SAMPLE, "mlruns/mlflow.db: not an SQLite database",
         files={"mlruns/mlflow.db": b"not a database\n" * 100}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project with the bad input in place
    monkeypatch.chdir(tmp_path)
    params = case.params if isinstance(case.params, str) else yaml.safe_dump(tiny_raw(**case.params))
    Path("params.yaml").write_text(params)
    for name, content in case.files.items():
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(content)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's own store unless the case sets one
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)

    # when the command runs
    with pytest.raises(SystemExit) as exit_info:
        main(case.argv)

    # then: its exit code, one clear last line, no traceback, nothing written
    err = capsys.readouterr().err
    last = err.rstrip("\n").splitlines()[-1]
    assert exit_info.value.code == case.code, err
    assert "Traceback" not in err, err
    assert last.startswith("cdgan: error: " if case.code == ERROR else "Error: "), err
    assert case.expected in last, err
    assert not [name for name in WRITTEN if Path(name).exists()], "nothing written on bad input"
    _assert_no_run_left_running(Path("mlruns/mlflow.db"))


def _assert_no_run_left_running(db: Path) -> None:
    """No MLflow run in the project's store is RUNNING (a store that is no database holds none)."""
    if not db.exists() or not db.read_bytes().startswith(b"SQLite format 3"):
        return
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" in tables:
            assert not conn.execute("SELECT 1 FROM runs WHERE status='RUNNING'").fetchall(), "a run left RUNNING"


def test_file_size_limit_while_sampling_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    # given the file-size limit (ulimit -f) below the samples' size: numpy reports the short write with no errno
    out = tmp_path / "out.npy"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as a shell's ulimit -f with the signal ignored
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, limit[1]))

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, np.zeros((1000, 100)))

    # when the samples are written as `cdgan sample` writes them
    try:
        with pytest.raises(CdganError, match=r"disk full while writing .*out.npy.*ulimit -f"):
            write_atomic(out, write)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, before)

    # then nothing is left behind
    assert list(tmp_path.iterdir()) == []
