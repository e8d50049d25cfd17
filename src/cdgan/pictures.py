"""Pictures people look at: image sample grids and 2-D scatter plots over the true mode centres."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cdgan.files import write_atomic
from cdgan.params import is_image_shape


def save_samples_png(path: Path, x: Tensor, centres: np.ndarray | None = None, title: str = "") -> Path:
    """A grid of up to 64 images (N, C, H, W) in [-1, 1], or a scatter of (N, 2) points."""
    if is_image_shape(x.shape[1:]):
        return write_atomic(path, lambda tmp: Image.fromarray(_grid(x)).save(tmp, format="png"))
    return write_atomic(path, lambda tmp: _scatter(tmp, x.numpy(), centres, title))


def sample_picture(x: Tensor, centres: np.ndarray | None = None, title: str = "") -> np.ndarray:
    """`save_samples_png`'s picture as an (H, W, 3) array (RGBA (H, W, 4) for the scatter) of uint8."""
    if is_image_shape(x.shape[1:]):
        return _grid(x)
    buffer = io.BytesIO()
    _scatter(buffer, x.numpy(), centres, title)
    return np.asarray(Image.open(buffer))


def _grid(x: Tensor) -> np.ndarray:
    """Up to 64 images (N, C, H, W) in [-1, 1], 8 a row, as torchvision's save_image writes them."""
    from torchvision.utils import make_grid

    grid = x[:64].float()
    if grid.shape[-1] < 32:  # tiny images (8x8 digits) are unreadable at native size
        grid = grid.repeat_interleave(4, -1).repeat_interleave(4, -2)
    grid = make_grid(grid, nrow=8, normalize=True, value_range=(-1, 1))  # (3, H, W) in [0, 1]
    return grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()  # (H, W, 3)


def save_curves_png(path: Path, rows: list[dict], x: str, y: str, group: str, title: str, log_y: bool = False) -> Path:
    """One line per value of `group`: y over x (e.g. generator gradient norm over critic steps, per loss)."""

    def draw(tmp: Path) -> None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for name in dict.fromkeys(row[group] for row in rows):
            points = [(row[x], row[y]) for row in rows if row[group] == name]
            ax.plot(*zip(*points, strict=True), marker="o", label=str(name))
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)

    return write_atomic(path, draw)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _scatter(path: Path | BinaryIO, points: np.ndarray, centres: np.ndarray | None, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    # hollow rings under the samples: a covered mode shows its samples inside the ring
    ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.4, label="samples", zorder=2)
    if centres is not None:
        ax.scatter(
            centres[:, 0], centres[:, 1], s=120, facecolors="none", edgecolors="red", label="true modes", zorder=1
        )
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)  # outside: never over a mode
    fig.savefig(path, format="png", bbox_inches="tight")
    plt.close(fig)
