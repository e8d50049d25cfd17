"""Tests for cdgan.models: shapes for points and images, output range, spectral norm."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import PIXEL_RANGE, ModelParams
from tests.conftest import assert_same_weights

SMALL = ModelParams(z_dim=4, hidden=8, channels=4)


def _linear_and_conv_layers(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_point_models_shapes() -> None:
    # given
    generator, energy = build_models(SMALL, (2,))
    z = generator.sample_z(5)
    # when
    x = generator(z)
    e = energy(x)
    # then
    assert isinstance(generator, Generator) and isinstance(energy, EnergyNet)
    assert z.shape == (5, 4)
    assert x.shape == (5, 2)
    assert e.shape == (5,), "energy must be one scalar per sample"


@pytest.mark.parametrize("side", [4, 8, 14, 16, 28])
@pytest.mark.parametrize("channels", [1, 3])
def test_image_models_shapes_and_range(side: int, channels: int) -> None:
    # given
    generator, energy = build_models(SMALL, (channels, side, side))
    # when: a large latent to push the output toward the tanh saturation
    x = generator(10 * generator.sample_z(6))
    e = energy(x)
    # then
    assert x.shape == (6, channels, side, side)
    assert x.min().item() >= -1.0 and x.max().item() <= 1.0, "images must lie in [-1, 1]"
    assert e.shape == (6,)


def test_energy_accepts_batch_of_one() -> None:
    generator, energy = build_models(SMALL, (1, 8, 8))
    generator.eval()  # batch norm needs eval mode for a single sample
    assert energy(generator(generator.sample_z(1))).shape == (1,)


def test_spectral_norm_flag_parametrizes_every_energy_layer() -> None:
    for shape in ((2,), (1, 8, 8)):
        # when
        _, with_sn = build_models(SMALL.model_copy(update={"spectral_norm": True}), shape)
        _, without_sn = build_models(SMALL.model_copy(update={"spectral_norm": False}), shape)
        # then
        layers = _linear_and_conv_layers(with_sn)
        assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers), f"{shape}: layer without SN"
        assert not any(parametrize.is_parametrized(m) for m in _linear_and_conv_layers(without_sn)), shape


def test_spectral_norm_bounds_each_layer_by_one() -> None:
    # given
    _, energy = build_models(SMALL.model_copy(update={"spectral_norm": True}), (2,))
    energy.eval()
    # then the largest singular value of each normalised weight is about 1
    for layer in _linear_and_conv_layers(energy):
        sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
        assert sigma == pytest.approx(1.0, rel=0.05), f"{layer}: sigma {sigma}"


def test_generator_is_never_spectrally_normalised() -> None:
    generator, _ = build_models(SMALL.model_copy(update={"spectral_norm": True}), (1, 8, 8))
    assert not any(parametrize.is_parametrized(m) for m in generator.modules())


def test_sizes_follow_params() -> None:
    # given two widths
    small, _ = build_models(ModelParams(z_dim=4, hidden=8), (2,))
    wide, _ = build_models(ModelParams(z_dim=4, hidden=16), (2,))
    # then the wider MLP has more parameters, and z_dim sets the first layer's input
    assert _count(wide) > _count(small)
    assert small.z_dim == 4 and small.sample_z(3).shape == (3, 4)


def test_28x28_nets_start_from_7x7_and_energy_channels_sets_the_energy_width_alone() -> None:
    # given MNIST's size, with the energy net at a quarter of the generator's width and at the same width
    generator, narrow = build_models(ModelParams(z_dim=4, channels=16, energy_channels=4), (1, 28, 28))
    same_g, same = build_models(ModelParams(z_dim=4, channels=16), (1, 28, 28))
    # then the generator unflattens to 7x7 and the energy net flattens 7x7 maps of its own width
    assert generator.body[1].unflattened_size == (64, 7, 7)
    assert narrow.body[-1].in_features == 4 * 4 * 49 and same.body[-1].in_features == 16 * 4 * 49
    assert _count(generator) == _count(same_g), "energy_channels leaves the generator alone"
    assert _count(narrow) < _count(same) / 8


def test_build_models_is_seeded_by_torch_rng() -> None:
    torch.manual_seed(5)
    a, _ = build_models(SMALL, (2,))
    torch.manual_seed(5)
    b, _ = build_models(SMALL, (2,))
    assert_same_weights(a.state_dict(), b.state_dict(), "generator")


def test_sample_z_uses_given_generator() -> None:
    generator, _ = build_models(SMALL, (2,))
    a = generator.sample_z(3, torch.Generator().manual_seed(1))
    b = generator.sample_z(3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_langevin_chains_from_images_keep_to_the_pixel_range_and_points_are_unbounded() -> None:
    image_generator, _ = build_models(ModelParams(z_dim=4, channels=4), (3, 8, 8))
    point_generator, _ = build_models(ModelParams(z_dim=4, hidden=8), (2,))
    assert image_generator.output_range == PIXEL_RANGE == (-1.0, 1.0)
    assert point_generator.output_range is None
