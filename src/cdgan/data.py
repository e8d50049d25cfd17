"""Data sets (embedded 8x8 digits and 28x28 MNIST, their stacks, 2-D mixtures, torchvision, image folders),
preparation, and the real data a training run draws its batches from: one tensor on the device, or batches
streamed to it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cdgan import distributed, mnist10k
from cdgan.errors import CdganError
from cdgan.files import write_atomic
from cdgan.params import PIXEL_RANGE, DataParams, TrainParams, is_image_shape

GRID25_STD = 0.05  # the standard 25-Gaussian grid (VEEGAN, PacGAN)
RING8_STD = 0.02
RING8_RADIUS = 2.0
N_STACKED = 20_000  # stacked-digits examples; 1000 modes, 20 per mode on average
STACKED_MNIST_TRAIN = 40_000  # stacked-mnist training stacks, from the training split's digits
STACKED_MNIST_HELDOUT = 26_000  # held-out stacks: the stacked MNIST protocol's sample count (VEEGAN, PacGAN, MEG)
STACKED_BASE = {"stacked-digits": "digits", "stacked-mnist": "mnist10k"}  # stacked set -> the digits it stacks

_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32: (N, 2) points, or (N, C, H, W) images in [-1, 1]
    y: np.ndarray  # int64 (N,) labels or mixture components; -1 where unknown

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return is_image_shape(self.shape)


@dataclass(frozen=True)
class Splits:
    """The training split (generator, energy net and domain classifier learn from it) and the held-out
    split (the FID reference, the k-NN metrics and the classifier's accuracy), disjoint."""

    train: Dataset
    heldout: Dataset


def mode_centres(dataset: str) -> tuple[np.ndarray, float]:
    """Centres (M, 2) and standard deviation of a 2-D mixture data set."""
    if dataset == "grid25":
        grid = np.arange(-4.0, 5.0, 2.0)
        return np.array([(i, j) for i in grid for j in grid]), GRID25_STD
    if dataset == "ring8":
        angles = 2 * math.pi * np.arange(8) / 8
        return RING8_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1), RING8_STD
    raise CdganError(f"data.dataset={dataset!r} has no mode centres; use grid25 or ring8")


def draw_mixture(dataset: str, n: int, rng: np.random.Generator) -> Dataset:
    centres, std = mode_centres(dataset)
    component = rng.integers(len(centres), size=n)
    x = centres[component] + std * rng.standard_normal((n, 2))
    return Dataset(x.astype(np.float32), component.astype(np.int64))


def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn: works offline

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 8.0 - 1.0  # pixel values 0..16 -> [-1, 1]
    return Dataset(x, digits.target.astype(np.int64))


def _mnist10k() -> Dataset:
    x, y = mnist10k.load()  # shipped with cdgan: works offline
    return Dataset(x[:, None].astype(np.float32) / 127.5 - 1.0, y)  # (N, 1, 28, 28) in [-1, 1]


def _stacked(digits: Dataset, n: int, rng: np.random.Generator) -> Dataset:
    """Three independently drawn digits of `digits` as the three channels: 1000 modes (stacked MNIST)."""
    picks = rng.integers(len(digits.y), size=(n, 3))
    x = np.concatenate([digits.x[picks[:, c]] for c in range(3)], axis=1)  # (N, 3, H, W)
    labels = digits.y[picks]
    return Dataset(x, labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2])  # class = the three digits


def _torchvision(params: DataParams) -> Dataset:
    import torchvision

    name = _TORCHVISION[params.dataset]
    root = Path(params.root)
    try:
        ds = getattr(torchvision.datasets, name)(root=str(root), train=True, download=params.download)
    except Exception as err:  # torchvision raises RuntimeError or URLError, depending on what failed
        cls = getattr(torchvision.datasets, name)
        folder = root / cls.base_folder if params.dataset == "cifar10" else root / name / "raw"
        raise CdganError(
            f"data.dataset={params.dataset}: could not load {name} under {root} ({err}). Without network, "
            f"download the {name} files elsewhere and put them under {folder} (or set data.root), then rerun"
        ) from None
    x = np.asarray(ds.data, dtype=np.float32)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # (N, C, H, W)
    return Dataset(x / 127.5 - 1.0, np.asarray(ds.targets, dtype=np.int64))


def _folder(params: DataParams) -> Dataset:
    import torchvision

    root = Path(params.root)
    if not root.is_dir():
        raise CdganError(f"data.root={root}: not a directory; data.dataset=folder wants <root>/<class>/<image>")
    try:
        ds = torchvision.datasets.ImageFolder(str(root))
    except (FileNotFoundError, OSError) as err:
        raise CdganError(f"data.root={root}: {err}; put images in class subfolders <root>/<class>/*.png") from None
    side = params.image_size
    images = [np.asarray(image.convert("RGB").resize((side, side)), dtype=np.float32) for image, _ in ds]
    x = np.stack(images).transpose(0, 3, 1, 2) / 127.5 - 1.0
    return Dataset(x, np.asarray(ds.targets, dtype=np.int64))


def _to_side(x: np.ndarray, side: int) -> np.ndarray:
    """Images (N, C, h, h) at side x side: padded with background where `side` exceeds h by at most side / 8
    (28x28 MNIST in 32x32, as LeNet fed it: strokes keep their shape and width), resized otherwise."""
    h = x.shape[-1]
    if h == side:
        return x
    if 0 < side - h <= side // 8 and (side - h) % 2 == 0:
        pad = (side - h) // 2
        return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=PIXEL_RANGE[0])
    resized = F.interpolate(torch.from_numpy(x), size=(side, side), mode="bilinear", antialias=True)
    return resized.clamp(*PIXEL_RANGE).numpy()


def build_dataset(params: DataParams) -> Dataset:
    rng = np.random.default_rng(params.seed)
    if params.dataset in ("grid25", "ring8"):
        return draw_mixture(params.dataset, params.n_points, rng)
    if params.dataset in ("digits", "mnist10k"):
        ds = _base(params.dataset)
    elif params.dataset in STACKED_BASE:
        ds = _stacked(_base(STACKED_BASE[params.dataset]), N_STACKED, rng)
    elif params.dataset == "folder":
        ds = _folder(params)
    else:
        ds = _torchvision(params)
    return _at_side(ds, params.image_size)


def _at_side(ds: Dataset, side: int) -> Dataset:
    return Dataset(_to_side(ds.x, side).astype(np.float32), ds.y)


def _base(dataset: str) -> Dataset:
    return _digits() if dataset == "digits" else _mnist10k()


def _split(ds: Dataset, heldout_frac: float, seed: int) -> Splits:
    """A seeded split, stratified by label where every label has two examples or more."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(ds.y[ds.y >= 0]) if (ds.y >= 0).all() else np.zeros(1)
    stratify = ds.y if counts[counts > 0].min() >= 2 else None
    train, heldout = train_test_split(
        np.arange(len(ds.y)), test_size=heldout_frac, random_state=seed, stratify=stratify
    )
    train, heldout = np.sort(train), np.sort(heldout)  # keep the data set's own order within each split
    return Splits(Dataset(ds.x[train], ds.y[train]), Dataset(ds.x[heldout], ds.y[heldout]))


def build_splits(params: DataParams) -> Splits:
    """`build_dataset` split into training and held-out parts (`data.heldout_frac`, seeded by `data.seed`).

    The stacked sets split their digits first and stack each part on its own, so no held-out stack shares a
    digit image with the training split (nor with the digit classifier's training data). stacked-digits
    holds out `heldout_frac` of N_STACKED stacks, stacked-mnist STACKED_MNIST_HELDOUT.
    """
    if params.dataset not in STACKED_BASE:
        return _split(build_dataset(params), params.heldout_frac, params.seed)
    digits = _split(_at_side(_base(STACKED_BASE[params.dataset]), params.image_size), params.heldout_frac, params.seed)
    rng = np.random.default_rng(params.seed)
    if params.dataset == "stacked-digits":
        n_heldout = round(N_STACKED * params.heldout_frac)
        n_train = N_STACKED - n_heldout
    else:
        n_train, n_heldout = STACKED_MNIST_TRAIN, STACKED_MNIST_HELDOUT
    return Splits(_stacked(digits.train, n_train, rng), _stacked(digits.heldout, n_heldout, rng))


def save_dataset(path: Path, ds: Dataset) -> Path:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez_compressed(f, x=ds.x, y=ds.y)  # image backgrounds are constant: stacks shrink several-fold

    return write_atomic(path, write)


def load_dataset(path: Path) -> Dataset:
    try:
        with np.load(path) as npz:
            return Dataset(npz["x"], npz["y"])
    except FileNotFoundError:
        raise CdganError(f"{path}: prepared data not found; run `cdgan prepare` (or dvc repro) first") from None
    except Exception as err:  # zipfile.BadZipFile, KeyError, ValueError for a corrupt file
        raise CdganError(f"{path}: corrupt prepared data ({type(err).__name__}); rerun `cdgan prepare`") from None


class _Rows(torch.utils.data.Dataset):
    """Rows of a host-memory array, fetched a whole batch per call (the sampler yields index lists)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: list[int]) -> Tensor:
        return torch.from_numpy(self.x[np.asarray(index)])


class _GlobalBatchShares(torch.utils.data.Sampler[list[int]]):
    """This rank's share of global batch b, b = start, start + 1, ...: batch b's rows depend only on (seed, b),
    so every rank draws the same global batch and a resumed run continues the stream at its batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self) -> Iterator[list[int]]:
        for b in itertools.count(self.start):
            index = np.random.default_rng([self.seed, b]).integers(self.n, size=self.batch_size)
            yield distributed.share(torch.from_numpy(index)).tolist()


class StreamedBatches:
    """Real batches for a data set too big for the device: DataLoader workers gather each batch from host
    memory (shared with the forked workers, not copied), into pinned memory on CUDA, and the copy to the
    device overlaps the step. `start` is the number of batches the run has drawn already."""

    def __init__(
        self, x: np.ndarray, batch_size: int, seed: int, start: int, device: torch.device, num_workers: int
    ) -> None:
        loader = torch.utils.data.DataLoader(
            _Rows(x),
            sampler=_GlobalBatchShares(len(x), batch_size, seed, start),
            batch_size=None,  # the sampler's index lists are the batches
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if num_workers else None,
        )
        self._batches = iter(loader)
        self._device = device

    def next(self) -> Tensor:
        return next(self._batches).to(self._device, non_blocking=True)


RealData = Tensor | StreamedBatches  # the whole data set on the device, or batches streamed to it


def streams(train: TrainParams, nbytes: int, device: torch.device) -> bool:
    """Whether training streams its batches: asked for, or (auto) data bigger than `device_data_mb` for a
    CUDA device. On the CPU the prepared array is in host memory already, and a tensor on it costs nothing."""
    if train.data_loading == "auto":
        return device.type == "cuda" and nbytes > train.device_data_mb * 2**20
    return train.data_loading == "stream"


def device_or_stream(train: TrainParams, x: np.ndarray, step: int, device: torch.device) -> RealData:
    """The prepared data for `fit` at `step`: one tensor on the device, or streamed batches (see `streams`)."""
    if streams(train, x.nbytes, device):
        return StreamedBatches(x, train.batch_size, train.seed, step * train.n_critic, device, train.num_workers)
    return torch.from_numpy(x).to(device)  # small data sets live on the device as one tensor
