"""The model's output: G(z), refined by Langevin dynamics on the energy net in data or latent space."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cdgan.losses import refine_langevin
from cdgan.models import EnergyNet, Generator
from cdgan.params import SampleParams

RAW = SampleParams(langevin_steps=0)


def draw_samples(
    generator: Generator,
    energy: EnergyNet | None,
    n: int,
    seed: int,
    sampling: SampleParams = RAW,
    batch_size: int = 500,
) -> Tensor:
    """n samples: (n, 2) points or (n, C, H, W) images in [-1, 1], on the CPU.

    Langevin dynamics with step s and temperature T, `sampling.langevin_steps` steps from G(z):
    - space `data`:   x <- x - s dE/dx + sqrt(2 s T) eps, a sample of p(x) ~ exp(-E(x) / T) in the limit;
    - space `latent`: z <- z - s (dE(G(z))/dz + T z) + sqrt(2 s T) eps, then x = G(z): a sample of
      p(z) ~ N(z; 0, I) exp(-E(G(z)) / T), Discriminator Driven Latent Sampling (Che et al. 2020; T = 1 there,
      E = -logit). T = 0 is noiseless descent on E (on E(G(z)) alone in latent space).
    The same seed gives the same samples; `langevin_steps = 0` (or no energy net) gives raw G(z).
    """
    device = next(generator.parameters()).device
    rng = torch.Generator(device).manual_seed(seed)
    is_refined = energy is not None and sampling.langevin_steps > 0
    modes = [(net, net.training) for net in (generator, energy) if net is not None]
    for net, _ in modes:
        net.eval()  # BatchNorm and spectral-norm power iterations must not move while sampling
    chunks = []
    for start in range(0, n, batch_size):
        z = generator.sample_z(min(batch_size, n - start), rng)
        if is_refined and sampling.space == "latent":
            z = _refine_latent(generator, energy, z, sampling, rng)
        with torch.no_grad():
            x = generator(z)
        if is_refined and sampling.space == "data":
            steps, step_size, clamp = sampling.langevin_steps, sampling.step_size, generator.output_range
            x = refine_langevin(energy, x, steps, step_size, _noise(sampling), clamp, rng)
        chunks.append(x.cpu())
    for net, was_training in modes:
        net.train(was_training)
    return torch.cat(chunks)


def _noise(sampling: SampleParams) -> float:
    return math.sqrt(2 * sampling.step_size * sampling.temperature)  # Langevin's noise at temperature T


def _refine_latent(
    generator: Generator, energy: EnergyNet, z: Tensor, sampling: SampleParams, rng: torch.Generator
) -> Tensor:
    def latent_energy(z: Tensor) -> Tensor:  # (B,): T * -log N(z; 0, I) + E(G(z)), up to a constant
        return energy(generator(z)) + sampling.temperature * z.square().sum(1) / 2

    return refine_langevin(latent_energy, z, sampling.langevin_steps, sampling.step_size, _noise(sampling), None, rng)
