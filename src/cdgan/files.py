"""Atomic writes (temp file, then rename), JSON metrics, and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cdgan.errors import CdganError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block finishes.

    On any error the temp file is removed and an existing `path` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return path


def write_json(path: Path, values: dict[str, Any]) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CdganError(f"{path}: not found; run the stage that writes it first (dvc repro)") from None
    except json.JSONDecodeError as err:
        raise CdganError(f"{path}: corrupt JSON ({err}); delete it and rerun its stage") from None


def save_torch(path: Path, obj: Any) -> Path:
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path, what: str = "file") -> Any:
    """Load with `weights_only=True`: a model file from an unknown source cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CdganError(f"{path}: {what} not found; run the stage that writes it first (dvc repro)") from None
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CdganError(f"{path}: corrupt or not a cdgan {what} ({type(err).__name__}); delete it and rerun") from err
