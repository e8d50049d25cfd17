"""Tests for cdgan.sampler: seeded, reproducible draws, raw G(z) at 0 steps, images kept in [-1, 1], and Langevin
in data and latent space reaching the known distribution of a Gaussian energy."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams, SampleParams
from cdgan.sampler import draw_samples

MODEL = ModelParams(z_dim=4, hidden=8, channels=4)
NOISY = SampleParams(langevin_steps=3, step_size=0.1, temperature=0.05)


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
    a = draw_samples(generator, energy, 10, seed=1, sampling=NOISY)
    b = draw_samples(generator, energy, 10, seed=1, sampling=NOISY)
    # then they are identical: sampling must not change the networks it samples from
    assert torch.equal(a, b), f"same seed, different refined samples (max diff {(a - b).abs().max().item():.3g})"


def test_sampling_leaves_energy_net_unchanged() -> None:
    # given
    generator, energy = _models((2,))
    before = {k: v.clone() for k, v in energy.state_dict().items()}
    # when
    draw_samples(generator, energy, 10, seed=1, sampling=SampleParams(langevin_steps=3, step_size=0.1))
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
    raw = draw_samples(generator, energy, 7, 3, SampleParams(langevin_steps=0, step_size=10.0, temperature=1.0))
    no_energy = draw_samples(generator, None, 7, seed=3, sampling=SampleParams(langevin_steps=5))
    # then
    assert torch.equal(raw, expected), "langevin_steps=0 should return G(z) unchanged"
    assert torch.equal(no_energy, expected), "without an energy net the samples are G(z)"


@pytest.mark.parametrize("space", ["data", "latent"])
def test_refinement_moves_samples(space: str) -> None:
    generator, energy = _models((2,))
    raw = draw_samples(generator, energy, 7, seed=3)
    refined = draw_samples(generator, energy, 7, 3, SampleParams(space=space, langevin_steps=2, step_size=0.5))
    assert not torch.allclose(raw, refined)


def test_refined_images_stay_in_range() -> None:
    # given a large step and strong noise, which would leave [-1, 1] without the clamp
    generator, energy = _models((3, 8, 8))
    # when
    x = draw_samples(generator, energy, 9, 0, SampleParams(langevin_steps=5, step_size=5.0, temperature=1.0))
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


class _Quadratic(nn.Module):
    """E(x) = |x - m|^2 / (2 s^2): the energy of N(m, s^2 I) at temperature 1."""

    def __init__(self, m: Tensor, s: float) -> None:
        super().__init__()
        self.m, self.s = m, s

    def forward(self, x: Tensor) -> Tensor:  # (B, 2) -> (B, 1)
        return (x - self.m).square().sum(1, keepdim=True) / (2 * self.s**2)


def _identity_generator() -> Generator:
    body = nn.Linear(2, 2, bias=False)
    nn.init.eye_(body.weight)
    return Generator(2, body, (2,))  # G(z) = z, z ~ N(0, I)


M = torch.tensor([2.0, -1.0])


@pytest.mark.parametrize(
    ("space", "temperature", "mean", "var"),
    [
        # p(x) ~ exp(-E(x) / T): N(m, s^2 T)
        ("data", 1.0, M, 0.25),
        ("data", 4.0, M, 1.0),
        # DDLS: p(z) ~ N(z; 0, I) exp(-E(G(z)) / T), a product of Gaussians with precision 1 + 1 / (s^2 T)
        ("latent", 1.0, M / 1.25, 0.2),  # s^2 T = 0.25: precision 5, mean m * 4 / 5
        ("latent", 4.0, M / 2.0, 0.5),  # s^2 T = 1: precision 2, mean m / 2
    ],
)
def test_langevin_reaches_the_known_distribution_of_a_gaussian_energy(
    space: str, temperature: float, mean: Tensor, var: float
) -> None:
    # given G(z) = z and a Gaussian energy of std 0.5 around m
    generator, energy = _identity_generator(), EnergyNet(_Quadratic(M, 0.5))
    sampling = SampleParams(space=space, langevin_steps=600, step_size=0.01, temperature=temperature)
    # when 4000 chains run long past their mixing time (1 / (step * precision) <= 20 steps)
    x = draw_samples(generator, energy, 4000, seed=0, sampling=sampling, batch_size=4000)
    # then their mean and variance are the target's (ULA's step bias is under 3 % here; sampling error ~2 %)
    assert torch.allclose(x.mean(0), mean, atol=0.05), f"mean {x.mean(0).tolist()}, expected {mean.tolist()}"
    assert x.var(0).sub(var).abs().max() < 0.08 * var, f"variance {x.var(0).tolist()}, expected {var}"


def test_zero_temperature_in_latent_space_descends_to_the_energy_minimum() -> None:
    # given G(z) = z and a Gaussian energy around m; T = 0 drops the prior and the noise
    generator, energy = _identity_generator(), EnergyNet(_Quadratic(M, 0.5))
    sampling = SampleParams(space="latent", langevin_steps=300, step_size=0.05, temperature=0.0)
    # when
    x = draw_samples(generator, energy, 50, seed=0, sampling=sampling)
    # then every chain ends at the minimum m: a point, not a distribution
    assert torch.allclose(x, M.expand_as(x), atol=1e-3), x[:3]
