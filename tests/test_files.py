"""Tests for cdgan.files: atomic writes, JSON metrics, and checkpoint loading that cannot run code."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from cdgan.errors import CdganError
from cdgan.files import load_torch, read_json, save_torch, write_atomic, write_json


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
