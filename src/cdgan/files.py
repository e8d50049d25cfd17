"""Atomic writes (temp file, then rename), JSON metrics, file hashes, and safe checkpoint loading."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from cdgan.errors import CdganError

DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space, file-size limit (ulimit -f), quota


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block finishes and the data is on disk.

    On any error the temp file is removed and an existing `path` is left untouched. A full disk, a quota or
    the file-size limit (ENOSPC, EDQUOT, EFBIG, also when a library wraps it) becomes one CdganError naming
    `path` and the free space.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; the final file gets the usual permissions
        yield tmp
        _fsync(tmp)  # some file systems report a full disk only when the data is flushed, not on write
        tmp.replace(path)
    except Exception as err:
        cause = _disk_full_cause(err)
        if cause is None:
            raise
        raise CdganError(_disk_full_message(path, cause)) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _disk_full_cause(err: BaseException) -> OSError | None:
    """The ENOSPC / EFBIG / EDQUOT behind `err`: itself, or what it was raised from or during.

    An OSError with no errno counts too: numpy's writer reports a short write (what the file-size limit gives)
    as a bare OSError, so one raised while writing is taken for the same."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and (seen.errno in DISK_FULL or seen.errno is None):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _disk_full_message(path: Path, err: OSError) -> str:
    where = next(p for p in (path.parent, *path.parents, Path()) if p.exists()).resolve()
    free = shutil.disk_usage(where).free
    return (
        f"disk full while writing {path}: free space {free / 2**20:.1f} MiB on {where} ({err.strerror or err}); "
        f"{path.name} keeps its previous content, if any, and no temp file is left. Free some space, or "
        "raise the quota or the file-size limit (ulimit -f), and rerun"
    )


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


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes: what identifies prepared data (resume keys, registry tags)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_torch(path: Path, obj: Any) -> Path:
    """torch.save into memory, then one plain write: torch's own file writer loses the errno of a failed
    write (a bare RuntimeError), so a full disk could not be told from a bug."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def load_torch(path: Path, what: str = "file") -> Any:
    """Load with `weights_only=True`: a model file from an unknown source cannot run code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CdganError(f"{path}: {what} not found; run the stage that writes it first (dvc repro)") from None
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        raise CdganError(f"{path}: corrupt or not a cdgan {what} ({type(err).__name__}); delete it and rerun") from err
