"""Tests for cdgan.files: atomic writes, a full disk, JSON metrics, and checkpoint loading that cannot run code."""

from __future__ import annotations

import errno
import os
import resource
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from cdgan.errors import CdganError
from cdgan.files import load_torch, read_json, save_torch, write_atomic, write_json
from cdgan.params import Paths
from tests.conftest import BIN, REPO, default_sigint, run, tiny_raw, wait_for_checkpoint


class _WriterError(RuntimeError):
    pass


class _Exploit:
    """Unpickling this object runs a shell command (the classic pickle attack)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_json_round_trip(tmp_path: Path) -> None:
    # given
    values = {"fid": 12.5, "modes": 25.0, "name": "cd", "nested": {"k": [1, 2]}}
    path = tmp_path / "metrics" / "eval.json"
    # when
    write_json(path, values)
    # then
    assert read_json(path) == values
    assert path.read_text().endswith("\n")


def test_atomic_write_keeps_previous_file_when_writer_raises(tmp_path: Path) -> None:
    # given an existing file
    path = tmp_path / "eval.json"
    write_json(path, {"fid": 1.0})

    def failing_writer(tmp: Path) -> None:
        tmp.write_text('{"fid": 2.0, "half": ')  # half-written, then the writer fails
        raise _WriterError("disk full")

    # when
    with pytest.raises(_WriterError):
        write_atomic(path, failing_writer)
    # then the previous content survives and no temp file is left beside it
    assert read_json(path) == {"fid": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"], "temp files left behind"


def test_atomic_write_failure_creates_no_file(tmp_path: Path) -> None:
    def failing_writer(tmp: Path) -> None:
        tmp.write_text("partial")
        raise _WriterError

    with pytest.raises(_WriterError):
        write_atomic(tmp_path / "new.json", failing_writer)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_usual_permissions(tmp_path: Path) -> None:
    # given the process umask
    umask = os.umask(0)
    os.umask(umask)
    # when
    path = write_json(tmp_path / "m.json", {"a": 1})
    # then the file is not mkstemp's private 0600
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_read_json_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="not found"):
        read_json(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    with pytest.raises(CdganError, match="corrupt JSON") as err:
        read_json(corrupt)
    assert str(corrupt) in str(err.value)


def test_torch_round_trip_of_state_dict(tmp_path: Path) -> None:
    # given
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "models" / "generator.pt"
    # when
    save_torch(path, {"state": net.state_dict(), "step": 7, "meta": {"loss": "cd"}})
    loaded = load_torch(path)
    # then
    assert loaded["step"] == 7 and loaded["meta"] == {"loss": "cd"}
    for key, value in net.state_dict().items():
        assert torch.equal(loaded["state"][key], value), key


def test_load_torch_missing_names_what(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="checkpoint not found"):
        load_torch(tmp_path / "checkpoint.pt", "checkpoint")


@pytest.mark.parametrize("content", [b"garbage bytes", b""])
def test_load_torch_refuses_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "generator.pt"
    path.write_bytes(content)
    with pytest.raises(CdganError, match="corrupt") as err:
        load_torch(path, "generator")
    assert str(path) in str(err.value)


def test_load_torch_refuses_truncated_checkpoint(tmp_path: Path) -> None:
    # given a real checkpoint cut in half (an interrupted copy)
    path = tmp_path / "generator.pt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    # when / then
    with pytest.raises(CdganError, match="corrupt"):
        load_torch(path)


def test_load_torch_refuses_pickle_that_runs_code(tmp_path: Path) -> None:
    # given a "model file" whose unpickling would create a marker file through os.system
    marker = tmp_path / "pwned"
    path = tmp_path / "generator.pt"
    torch.save({"state": _Exploit(marker)}, path)
    # when / then
    with pytest.raises(CdganError, match="corrupt or not a cdgan"):
        load_torch(path, "generator")
    assert not marker.exists(), "loading the file ran its payload"
    # and the payload is live: a plain unsafe load does run it (harmless here: it touches a file in tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "test setup: the crafted pickle should run code when loaded unsafely"


def _file_size_limit(limit: int) -> Callable[[], None]:
    """preexec_fn: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored, so they return an error
    instead of killing the process), as on a full disk, but only for this child."""

    def limit_child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_child


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


# writes `target` with ~4 MB under the limit that the test sets; prints the error line cli.main would print
_LIMITED_WRITE = """
import sys, torch
from pathlib import Path
from cdgan.errors import CdganError
from cdgan.files import save_torch, write_json
target, kind = Path(sys.argv[1]), sys.argv[2]
try:
    if kind == "torch":
        save_torch(target, {"w": torch.zeros(1_000_000)})
    else:
        write_json(target, {"values": list(range(1_000_000))})
except CdganError as err:
    sys.exit(f"cdgan: error: {err}")
"""


@pytest.mark.parametrize("kind", ["torch", "json"])
def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path: Path, kind: str) -> None:
    # given an existing file
    target = tmp_path / "out" / ("checkpoint.pt" if kind == "torch" else "eval.json")
    (save_torch(target, {"w": torch.ones(3)}) if kind == "torch" else write_json(target, {"fid": 1.0}))
    before = _files(target.parent)

    # when a process whose writes stop at 1 MB (RLIMIT_FSIZE) replaces it with ~4 MB
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED_WRITE, str(target), kind],
        capture_output=True,
        text=True,
        cwd=REPO,
        preexec_fn=_file_size_limit(1_000_000),
    )

    # then it fails with one clear error, the old file is intact and no temp file is left beside it
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"cdgan: error: disk full while writing {target}: free space "), result.stderr
    assert "File too large" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert _files(target.parent) == before, "the previous file changed or a temp file was left"


def test_a_full_disk_is_recognised_behind_a_library_error(tmp_path: Path) -> None:
    # given a writer whose library wraps the OSError (as torch's own file writer does)
    def wrapped(tmp: Path) -> None:
        tmp.write_text("partial")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        except OSError as err:
            raise RuntimeError("writer failed") from err

    # when / then: one CdganError naming the file, nothing left behind
    with pytest.raises(CdganError, match=r"^disk full while writing .*new\.json: free space [\d.]+ MiB on "):
        write_atomic(tmp_path / "new.json", wrapped)
    assert list(tmp_path.iterdir()) == []


def test_other_os_errors_are_not_called_a_full_disk(tmp_path: Path) -> None:
    def denied(tmp: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    with pytest.raises(PermissionError):
        write_atomic(tmp_path / "new.json", denied)
    assert list(tmp_path.iterdir()) == []


BIG_CHECKPOINT = {  # 2-D points (no classifier to prepare) but wide nets: a checkpoint of several MB
    "data": {"dataset": "grid25", "n_points": 500},
    "model": {"hidden": 384},
    "train": {"steps": 100_000, "checkpoint_every": 5, "log_every": 5, "eval_every": 0, "cd_k": 1},
}


def test_cdgan_train_on_a_full_disk_keeps_the_last_checkpoint_and_exits_with_one_error(
    tmp_path: Path, spawn: Callable
) -> None:
    # given a project whose training was interrupted (Ctrl-C) after it wrote a resume checkpoint
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_raw(**BIG_CHECKPOINT)))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}  # small, unlike the session's store
    run(["cdgan", "prepare"], project, env=env)
    resume = Paths(project).resume
    env_path = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    first = spawn(["cdgan", "train"], cwd=project, env=env_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, preexec_fn=default_sigint)  # fmt: skip
    wait_for_checkpoint(first, resume, seconds=180)
    first.send_signal(signal.SIGINT)  # Ctrl-C: the atomic write it may be in removes its temp file
    first.wait(60)
    (checkpoint,) = resume.glob("*.pt")
    before = {"resume": _files(resume), "models": _files(Paths(project).models)}
    size = checkpoint.stat().st_size
    store_size = (tmp_path / "mlflow.db").stat().st_size
    assert size > 4 * store_size, f"test setup: a {size} B checkpoint must dwarf the {store_size} B store"

    # when training resumes in a process that cannot write a file past half a checkpoint
    limited = subprocess.run(
        ["cdgan", "train"], cwd=project, env=env_path, capture_output=True, text=True,
        preexec_fn=_file_size_limit(size // 2), timeout=300,
    )  # fmt: skip

    # then it stops with one line naming the checkpoint, and the checkpoint on disk is the one before
    assert limited.returncode == 1, limited.stderr[-3000:]
    error = [line for line in limited.stderr.splitlines() if line.startswith("cdgan: error:")]
    assert error and error[0].startswith(f"cdgan: error: disk full while writing {checkpoint.relative_to(project)}"), (
        limited.stderr[-3000:]
    )
    assert "free space" in error[0] and "Traceback" not in limited.stderr, limited.stderr[-3000:]
    after = {"resume": _files(resume), "models": _files(Paths(project).models)}
    assert after == before, "the previous checkpoint changed, or a temp file or model file was left"
    assert load_torch(checkpoint, "checkpoint")["step"] % 5 == 0, "the kept checkpoint still loads"
