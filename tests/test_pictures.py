"""Tests for cdgan.pictures: real PNG files, of the grid size and pixel values the images give, or plots that
show what they say (red rings for the modes, one colour per curve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdgan.pictures import save_curves_png, save_samples_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAD = 2  # torchvision's make_grid padding between and around tiles
C0, C1 = (31, 119, 180), (255, 127, 14)  # matplotlib's first two cycle colours: the first and second curve


def _png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def _pixels_near(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 10) -> int:
    return int((np.abs(rgb.astype(int) - colour) <= tol).all(-1).sum())


def test_digit_grid_is_8_tiles_wide_each_upscaled_4x_with_values_mapped_from_minus_1_1(tmp_path: Path) -> None:
    # given 10 grey 8x8 images, image i uniformly at value v_i from -1 to 1
    values = torch.linspace(-1, 1, 10)
    x = values.view(10, 1, 1, 1).expand(10, 1, 8, 8)
    # when
    path = save_samples_png(tmp_path / "samples.png", x)
    # then 2 rows of 8 tiles of 32x32 pixels with 2 pixels of padding, each tile grey at (v + 1) / 2 * 255
    rgb = _png(path)
    tile = 8 * 4 + PAD
    assert rgb.shape == (2 * tile + PAD, 8 * tile + PAD, 3)
    for i, value in enumerate(values.tolist()):
        top, left = PAD + (i // 8) * tile, PAD + (i % 8) * tile
        block = rgb[top : top + 32, left : left + 32]
        expected = round((value + 1) / 2 * 255)
        assert np.abs(block.astype(int) - expected).max() <= 1, f"image {i} (value {value}) drawn as {block[0, 0]}"
    assert (rgb[:PAD] == 0).all() and (rgb[:, :PAD] == 0).all(), "the padding is black"


def test_grid_shows_at_most_64_images_and_keeps_32_pixel_images_at_native_size(tmp_path: Path) -> None:
    many = _png(save_samples_png(tmp_path / "many.png", torch.zeros(100, 1, 8, 8)))
    assert many.shape[:2] == (8 * 34 + PAD, 8 * 34 + PAD), "64 images: 8 rows of 8"
    colour = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rgb = _png(save_samples_png(tmp_path / "colour.png", colour))
    assert rgb.shape == (32 + 2 * PAD, 4 * (32 + PAD) + PAD, 3)
    first = rgb[PAD : PAD + 32, PAD : PAD + 32].astype(int)
    expected = ((colour[0] + 1) / 2 * 255).round().permute(1, 2, 0).numpy()
    assert np.abs(first - expected).max() <= 1, "the first image, pixel for pixel, in its colours"


@pytest.mark.parametrize("has_centres", [True, False])
def test_points_scatter_draws_red_rings_only_for_the_mode_centres(tmp_path: Path, has_centres: bool) -> None:
    # given points around 4 centres
    centres = np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    rng = np.random.default_rng(0)
    points = torch.from_numpy(centres[rng.integers(4, size=400)] + 0.05 * rng.standard_normal((400, 2)))
    # when
    path = save_samples_png(tmp_path / "points.png", points, centres if has_centres else None, title="cd k=2")
    # then a figure of about 5 x 5 inches at 100 dpi, wider with the legend outside, with red only for rings
    rgb = _png(path)
    height, width, _ = rgb.shape
    assert 300 < height <= 520 and width > height, rgb.shape
    red = int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())
    assert (red > 20) is has_centres, f"{red} red pixels"
    assert [p.name for p in tmp_path.iterdir()] == ["points.png"], "no temporary file is left"


def test_curves_draw_one_colour_per_group(tmp_path: Path) -> None:
    # given a gradient norm over steps for two losses, then for one
    rows = [
        {"loss": loss, "step": step, "grad": g * (step + 1)}
        for loss, g in (("cd", 1.0), ("bce", 0.1))
        for step in range(5)
    ]
    # when
    both = _png(save_curves_png(tmp_path / "both.png", rows, "step", "grad", "loss", "gradient norm", log_y=True))
    one = _png(save_curves_png(tmp_path / "one.png", rows[:5], "step", "grad", "loss", "gradient norm"))
    # then a 6 x 4 inch figure at 100 dpi, the first group in the first cycle colour, the second in the next
    assert 350 < both.shape[0] < both.shape[1] <= 650, both.shape
    assert _pixels_near(both, C0) > 100 and _pixels_near(both, C1) > 100, "two curves, two colours"
    assert _pixels_near(one, C0) > 100 and _pixels_near(one, C1) == 0, "one curve, one colour"
