"""Tests for cdgan.sampler: seeded, reproducible draws, raw G(z) at 0 steps, images kept in [-1, 1]."""

from __future__ import annotations

import pytest
import torch

from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams
from cdgan.sampler import draw_samples

MODEL = ModelParams(z_dim=4, hidden=8, channels=4)


def _models(shape: tuple[int, ...]) -> tuple[Generator, EnergyNet]:
    torch.manual_seed(0)
    return build_models(MODEL, shape)  # fresh from build_models: both in training mode, as after fit


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_same_seed_same_samples_different_seed_different_samples(shape: tuple[int, ...]) -> None:
    # given
    generator, energy = _models(shape)
    # when
    a = draw_samples(generator, energy, 10, seed=1)
    b = draw_samples(generator, energy, 10, seed=1)
    c = draw_samples(generator, energy, 10, seed=2)
    # then
    assert a.shape == (10, *shape)
    assert torch.equal(a, b), "same seed gave different samples"
    assert not torch.equal(a, c), "different seeds gave the same samples"


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_same_seed_same_refined_samples(shape: tuple[int, ...]) -> None:
    # given a generator and its energy net, straight from training (train mode)
    generator, energy = _models(shape)
    # when the samples are refined twice with the same seed
    a = draw_samples(generator, energy, 10, seed=1, langevin_steps=3, step_size=0.1, noise=0.01)
    b = draw_samples(generator, energy, 10, seed=1, langevin_steps=3, step_size=0.1, noise=0.01)
    # then they are identical: sampling must not change the networks it samples from
    assert torch.equal(a, b), f"same seed, different refined samples (max diff {(a - b).abs().max().item():.3g})"


def test_sampling_leaves_energy_net_unchanged() -> None:
    # given
    generator, energy = _models((2,))
    before = {k: v.clone() for k, v in energy.state_dict().items()}
    # when
    draw_samples(generator, energy, 10, seed=1, langevin_steps=3, step_size=0.1)
    # then
    changed = [k for k, v in energy.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, f"draw_samples changed the energy net's state: {changed}"


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8)])
def test_zero_langevin_steps_is_raw_generator_output(shape: tuple[int, ...]) -> None:
    # given the latent draw that draw_samples makes from the seed
    generator, energy = _models(shape)
    generator.eval()
    with torch.no_grad():
        expected = generator(generator.sample_z(7, torch.Generator().manual_seed(3)))
    generator.train()
    # when
    raw = draw_samples(generator, energy, 7, seed=3, langevin_steps=0, step_size=10.0, noise=1.0)
    no_energy = draw_samples(generator, None, 7, seed=3, langevin_steps=5)
    # then
    assert torch.equal(raw, expected), "langevin_steps=0 should return G(z) unchanged"
    assert torch.equal(no_energy, expected), "without an energy net the samples are G(z)"


def test_refinement_moves_samples() -> None:
    generator, energy = _models((2,))
    raw = draw_samples(generator, energy, 7, seed=3)
    refined = draw_samples(generator, energy, 7, seed=3, langevin_steps=2, step_size=0.5)
    assert not torch.allclose(raw, refined)


def test_refined_images_stay_in_range() -> None:
    # given a large step and strong noise, which would leave [-1, 1] without the clamp
    generator, energy = _models((3, 8, 8))
    # when
    x = draw_samples(generator, energy, 9, seed=0, langevin_steps=5, step_size=5.0, noise=2.0)
    # then
    assert x.shape == (9, 3, 8, 8)
    assert x.min().item() >= -1.0 and x.max().item() <= 1.0


def test_uneven_batches_give_every_sample_and_restore_the_mode() -> None:
    # given
    generator, energy = _models((2,))
    generator.train()
    # when drawn in uneven batches
    x = draw_samples(generator, energy, 11, seed=0, batch_size=4)
    # then all samples arrive, on the CPU, and the generator's mode is restored
    assert x.shape == (11, 2) and x.device.type == "cpu"
    assert generator.training
