"""Tests for cdgan.data: embedded data sets, 2-D mixtures, torchvision and folder loading, save/load, batches."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cdgan.data import (
    Dataset,
    StreamedBatches,
    build_dataset,
    build_splits,
    load_dataset,
    mode_centres,
    save_dataset,
    streams,
)
from cdgan.errors import CdganError
from cdgan.params import DataParams, TrainParams


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return build_dataset(DataParams(dataset="digits"))


# --- training and held-out splits ---------------------------------------------------------------------------------


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


def test_digits_split_is_disjoint_complete_stratified_and_stable(digits: Dataset) -> None:
    # when
    splits = build_splits(DataParams(dataset="digits"))
    again, other = build_splits(DataParams(dataset="digits")), build_splits(DataParams(dataset="digits", seed=1))
    # then the two parts partition the data set, about 20 % held out, every class in both
    assert len(splits.train.x) + len(splits.heldout.x) == len(digits.x)
    assert len(splits.heldout.x) == pytest.approx(0.2 * len(digits.x), abs=1)
    assert not _rows(splits.train.x) & _rows(splits.heldout.x), "an image is in both splits"
    assert _rows(splits.train.x) | _rows(splits.heldout.x) == _rows(digits.x)
    assert set(np.unique(splits.heldout.y)) == set(range(10))
    # the same data.seed gives the same split; another seed another one
    assert np.array_equal(again.heldout.x, splits.heldout.x) and np.array_equal(again.train.y, splits.train.y)
    assert not np.array_equal(other.heldout.x, splits.heldout.x)


def test_heldout_frac_sets_the_share_held_out() -> None:
    splits = build_splits(DataParams(dataset="grid25", n_points=1000, heldout_frac=0.3))
    assert (len(splits.train.x), len(splits.heldout.x)) == (700, 300)


def test_stacked_digits_splits_share_no_digit_image(digits: Dataset) -> None:
    # when
    splits = build_splits(DataParams(dataset="stacked-digits"))

    # then no digit image of a held-out stack appears in any training stack (nor in the digit classifier's
    # training split, which is the plain digits' training split)
    def digit_images(x: np.ndarray) -> set[bytes]:
        return {x[i, c].tobytes() for i in range(len(x)) for c in range(3)}

    digit_split = build_splits(DataParams(dataset="digits"))
    heldout_digits = digit_images(splits.heldout.x)
    assert not heldout_digits & digit_images(splits.train.x)
    assert not heldout_digits & _rows(digit_split.train.x[:, 0])
    assert splits.train.shape == splits.heldout.shape == (3, 8, 8)
    assert len(splits.heldout.x) == pytest.approx(0.2 * (len(splits.train.x) + len(splits.heldout.x)), abs=1)


# --- 2-D mixtures --------------------------------------------------------------------------------------------------


def test_grid25_centres_and_std() -> None:
    # when
    centres, std = mode_centres("grid25")
    # then the 25 points (i, j) for i, j in {-4, -2, 0, 2, 4}, std 0.05
    expected = {(i, j) for i in (-4, -2, 0, 2, 4) for j in (-4, -2, 0, 2, 4)}
    assert centres.shape == (25, 2)
    assert {tuple(c) for c in centres.tolist()} == expected
    assert std == 0.05


def test_grid25_samples_lie_near_their_centres() -> None:
    # given
    params = DataParams(dataset="grid25", n_points=4000, seed=3)
    centres, std = mode_centres("grid25")
    # when
    ds = build_dataset(params)
    # then each sample sits around the centre its label names, with the documented spread
    assert ds.x.shape == (4000, 2) and ds.x.dtype == np.float32
    offsets = ds.x - centres[ds.y]
    assert np.abs(offsets).max() < 6 * std, "a sample is far from its labelled centre"
    assert offsets.std() == pytest.approx(std, rel=0.05)
    assert len(np.unique(ds.y)) == 25 and ds.n_classes == 25


def test_ring8_has_eight_centres_on_a_circle() -> None:
    centres, std = mode_centres("ring8")
    ds = build_dataset(DataParams(dataset="ring8", n_points=500))
    assert centres.shape == (8, 2)
    radii = np.linalg.norm(centres, axis=1)
    np.testing.assert_allclose(radii, radii[0])
    assert len(np.unique(np.round(centres, 6), axis=0)) == 8
    assert np.abs(ds.x - centres[ds.y]).max() < 6 * std


def test_mixture_is_seeded() -> None:
    a = build_dataset(DataParams(dataset="grid25", n_points=100, seed=1))
    b = build_dataset(DataParams(dataset="grid25", n_points=100, seed=1))
    c = build_dataset(DataParams(dataset="grid25", n_points=100, seed=2))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_mode_centres_of_image_data_is_an_error() -> None:
    with pytest.raises(CdganError, match="grid25 or ring8"):
        mode_centres("digits")


# --- embedded images -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["grid25", "ring8", "digits", "stacked-digits"])
def test_a_built_data_set_is_images_exactly_when_its_name_says_so(dataset: str) -> None:
    params = DataParams(dataset=dataset, n_points=50)
    assert build_dataset(params).is_image is params.is_image, f"{dataset}: its shape and its name disagree"


def test_digits_shape_range_and_labels(digits: Dataset) -> None:
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == np.float32
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0, "digits should span [-1, 1] exactly"
    assert digits.y.dtype == np.int64 and set(np.unique(digits.y)) == set(range(10))
    assert digits.shape == (1, 8, 8) and digits.n_classes == 10


def test_stacked_digits_has_three_channels_and_1000_modes(digits: Dataset) -> None:
    # when
    ds = build_dataset(DataParams(dataset="stacked-digits"))
    # then
    assert ds.x.ndim == 4 and ds.x.shape[1:] == (3, 8, 8)
    assert ds.y.min() >= 0 and ds.y.max() <= 999
    assert len(np.unique(ds.y)) > 990, "20,000 draws of 1000 equally likely modes should hit almost all"
    assert ds.x.min() >= -1.0 and ds.x.max() <= 1.0
    # and each channel is a real digit whose class is the matching decimal digit of the label
    first = ds.x[0]
    hundreds, tens, units = ds.y[0] // 100, ds.y[0] // 10 % 10, ds.y[0] % 10
    for channel, digit in enumerate((hundreds, tens, units)):
        matches = np.all(digits.x[:, 0] == first[channel], axis=(1, 2))
        assert matches.any(), f"channel {channel} is not one of the embedded digits"
        assert digit in set(digits.y[matches]), f"channel {channel} does not show digit {digit}"


def test_digits_resized_to_16(digits: Dataset) -> None:
    ds = build_dataset(DataParams(dataset="digits", image_size=16))
    assert ds.x.shape == (1797, 1, 16, 16) and ds.x.dtype == np.float32
    assert ds.x.min() >= -1.0 and ds.x.max() <= 1.0
    np.testing.assert_array_equal(ds.y, digits.y)


# --- torchvision without network -----------------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of the MNIST files: magic (0, 0, 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_mnist_without_download_and_empty_root_says_where_to_put_files(tmp_path: Path) -> None:
    # given an empty root and no download (never touches the network)
    params = DataParams(dataset="mnist", root=str(tmp_path), download=False)
    # when / then
    with pytest.raises(CdganError) as err:
        build_dataset(params)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message, f"no place for the files in: {message}"
    assert "data.root" in message
    assert not any(tmp_path.iterdir()), "a failed load should write nothing under root"


def test_mnist_files_put_where_the_error_says_are_loaded(tmp_path: Path) -> None:
    # given the four MNIST files (tiny: 5 images of 8x8) in the folder the error message names
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(5 * 64, dtype=np.uint8).reshape(5, 8, 8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    # when
    ds = build_dataset(DataParams(dataset="mnist", root=str(tmp_path), download=False))
    # then
    assert ds.x.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(ds.x[:, 0], images / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(ds.y, labels)


def test_cifar10_error_names_the_folder_torchvision_reads(tmp_path: Path) -> None:
    # given
    params = DataParams(dataset="cifar10", root=str(tmp_path), download=False)
    # when / then: torchvision looks for <root>/cifar-10-batches-py
    with pytest.raises(CdganError) as err:
        build_dataset(params)
    expected = tmp_path / torchvision.datasets.CIFAR10.base_folder
    assert str(expected) in str(err.value), f"error should tell the user to put files under {expected}: {err.value}"


# --- image folder --------------------------------------------------------------------------------------------------


def _image_folder(root: Path) -> Path:
    """Two classes: 3 black 10x10 images in `a`, 2 white 12x12 images in `b`."""
    for name, colour, side, n in (("a", (0, 0, 0), 10, 3), ("b", (255, 255, 255), 12, 2)):
        (root / name).mkdir(parents=True)
        for index in range(n):
            Image.new("RGB", (side, side), colour).save(root / name / f"{index}.png")
    return root


@pytest.mark.parametrize("side", [8, 16])
def test_folder_dataset_shape_labels_and_range(tmp_path: Path, side: int) -> None:
    # given
    root = _image_folder(tmp_path / "images")
    # when
    ds = build_dataset(DataParams(dataset="folder", root=str(root), image_size=side))
    # then
    assert ds.x.shape == (5, 3, side, side) and ds.x.dtype == np.float32
    np.testing.assert_array_equal(ds.y, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(ds.x[ds.y == 0], -1.0, err_msg="black pixels should map to -1")
    np.testing.assert_allclose(ds.x[ds.y == 1], 1.0, err_msg="white pixels should map to 1")


def test_folder_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="not a directory") as err:
        build_dataset(DataParams(dataset="folder", root=str(tmp_path / "missing")))
    assert str(tmp_path / "missing") in str(err.value)


def test_folder_without_class_subfolders_raises(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="class subfolders"):
        build_dataset(DataParams(dataset="folder", root=str(tmp_path)))


# --- save / load ---------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    # given
    ds = build_dataset(DataParams(dataset="grid25", n_points=50))
    path = tmp_path / "prepared" / "dataset.npz"
    # when
    save_dataset(path, ds)
    loaded = load_dataset(path)
    # then
    assert np.array_equal(loaded.x, ds.x) and loaded.x.dtype == ds.x.dtype
    assert np.array_equal(loaded.y, ds.y) and loaded.y.dtype == ds.y.dtype
    assert [p.name for p in path.parent.iterdir()] == ["dataset.npz"], "temp files left behind"


def test_load_missing_dataset_raises(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="prepare") as err:
        load_dataset(tmp_path / "dataset.npz")
    assert str(tmp_path / "dataset.npz") in str(err.value)


@pytest.mark.parametrize("content", [b"not a zip file", b""])
def test_load_corrupt_dataset_raises(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "dataset.npz"
    path.write_bytes(content)
    with pytest.raises(CdganError, match="corrupt"):
        load_dataset(path)


def test_load_dataset_without_labels_raises(tmp_path: Path) -> None:
    path = tmp_path / "dataset.npz"
    with path.open("wb") as f:
        np.savez(f, x=np.zeros((2, 2), np.float32))
    with pytest.raises(CdganError, match="corrupt"):
        load_dataset(path)


# --- batches -------------------------------------------------------------------------------------------------------


def _stream(x: np.ndarray, start: int = 0, num_workers: int = 0) -> StreamedBatches:
    return StreamedBatches(x, 6, seed=0, start=start, device=torch.device("cpu"), num_workers=num_workers)


def test_streamed_batches_are_rows_of_the_data_the_same_with_or_without_workers() -> None:
    # given rows that identify themselves
    x = np.arange(40, dtype=np.float32).reshape(20, 2)

    # when batches are streamed in the loop's process and by two workers
    alone, workers = _stream(x), _stream(x, num_workers=2)
    a = [alone.next() for _ in range(5)]
    b = [workers.next() for _ in range(5)]

    # then the workers change nothing, every batch is rows of the data, and batches differ
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert all(batch.shape == (6, 2) and all(row in x.tolist() for row in batch.tolist()) for batch in a)
    assert not torch.equal(a[0], a[1])


def test_a_stream_started_at_batch_k_goes_on_as_one_that_drew_k_batches() -> None:
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    from_start = _stream(x)
    drawn = [from_start.next() for _ in range(4)]
    assert torch.equal(_stream(x, start=3).next(), drawn[3])


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
    params = TrainParams(data_loading=data_loading)
    assert streams(params, mb * 2**20, torch.device(device)) is expected


# --- embedded MNIST and stacked MNIST ------------------------------------------------------------------------------


def test_mnist10k_is_28x28_in_the_pixel_range_and_padded_to_32_with_background() -> None:
    # when
    native = build_dataset(DataParams(dataset="mnist10k", image_size=28))
    padded = build_dataset(DataParams(dataset="mnist10k", image_size=32))
    # then the digits as they are, and the same digits framed by 2 pixels of background (not stretched)
    assert native.x.shape == (10_000, 1, 28, 28) and native.x.dtype == np.float32
    assert native.x.min() == -1.0 and native.x.max() == 1.0
    assert padded.shape == (1, 32, 32)
    assert np.array_equal(padded.x[:, :, 2:30, 2:30], native.x)
    assert (padded.x[:, :, :2] == -1.0).all() and (padded.x[:, :, :, 30:] == -1.0).all()
    assert np.array_equal(native.y, padded.y) and set(np.unique(native.y)) == set(range(10))


def test_stacked_mnist_splits_share_no_digit_image_and_hold_out_26000_stacks() -> None:
    # when
    splits = build_splits(DataParams(dataset="stacked-mnist", image_size=28))
    digits = build_splits(DataParams(dataset="mnist10k", image_size=28))

    # then three real digits a stack, 1000 modes in both parts, no held-out digit in a training stack or in the
    # digit classifier's training split, and the protocol's 26,000 held-out stacks
    def digit_images(x: np.ndarray) -> set[bytes]:
        return {x[i, c].tobytes() for i in range(len(x)) for c in range(3)}

    assert splits.train.shape == splits.heldout.shape == (3, 28, 28)
    assert len(splits.heldout.x) == 26_000
    assert len(np.unique(splits.train.y)) == len(np.unique(splits.heldout.y)) == 1000
    heldout_digits = digit_images(splits.heldout.x[:5000])
    assert not heldout_digits & digit_images(splits.train.x[:20_000])
    assert not heldout_digits & _rows(digits.train.x[:, 0])
    assert heldout_digits <= _rows(digits.heldout.x[:, 0])
    first = splits.heldout.x[0]
    labels = [
        int(digits.heldout.y[[np.array_equal(d[0], first[c]) for d in digits.heldout.x].index(True)]) for c in range(3)
    ]
    assert splits.heldout.y[0] == labels[0] * 100 + labels[1] * 10 + labels[2], "the class is the three digits"
