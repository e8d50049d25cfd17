"""Drawing samples from a trained generator, optionally refined by Langevin steps on the energy net."""

from __future__ import annotations

import torch
from torch import Tensor

from cdgan.losses import refine_langevin
from cdgan.models import EnergyNet, Generator


def draw_samples(
    generator: Generator,
    energy: EnergyNet | None,
    n: int,
    seed: int,
    langevin_steps: int = 0,
    step_size: float = 0.01,
    noise: float = 0.0,
    batch_size: int = 500,
) -> Tensor:
    """x_k for n latent draws: (n, 2) points or (n, C, H, W) images in [-1, 1], on the CPU.

    The same seed gives the same samples; `langevin_steps = 0` (or no energy net) gives raw G(z).
    """
    device = next(generator.parameters()).device
    rng = torch.Generator(device).manual_seed(seed)
    is_image = len(generator.data_shape) == 3
    modes = [(net, net.training) for net in (generator, energy) if net is not None]
    for net, _ in modes:
        net.eval()  # BatchNorm and spectral-norm power iterations must not move while sampling
    chunks = []
    for start in range(0, n, batch_size):
        with torch.no_grad():
            x = generator(generator.sample_z(min(batch_size, n - start), rng))
        if energy is not None and langevin_steps:
            clamp = (-1.0, 1.0) if is_image else None
            x = refine_langevin(energy, x, langevin_steps, step_size, noise, clamp, rng)
        chunks.append(x.cpu())
    for net, was_training in modes:
        net.train(was_training)
    return torch.cat(chunks)
