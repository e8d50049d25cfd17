"""Generator and energy network: MLPs for 2-D points, DCGAN-style conv nets for images."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from cdgan.params import PIXEL_RANGE, ModelParams, base_side, is_image_shape


def _sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(layer) if enabled else layer


class Generator(nn.Module):
    def __init__(self, z_dim: int, body: nn.Module, data_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.data_shape = data_shape
        self.body = body

    def forward(self, z: Tensor) -> Tensor:  # (B, z_dim) -> (B, *data_shape)
        return self.body(z).view(len(z), *self.data_shape)

    @property
    def output_range(self) -> tuple[float, float] | None:
        """The range of G(z), where Langevin chains from it are kept: the pixel range for images, none for points."""
        return PIXEL_RANGE if is_image_shape(self.data_shape) else None

    def sample_z(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = next(self.parameters()).device
        return torch.randn(n, self.z_dim, generator=generator, device=device)


class EnergyNet(nn.Module):
    """E(x) -> (B,): low on real data, high on generated data. A GAN critic's output is -E."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x).squeeze(-1)


def _mlp_pair(params: ModelParams) -> tuple[nn.Module, nn.Module]:
    h, sn = params.hidden, params.spectral_norm
    generator = nn.Sequential(
        nn.Linear(params.z_dim, h), nn.ReLU(),
        nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, 2),
    )  # fmt: skip
    # SiLU, not ReLU: Langevin steps follow dE/dx, which a piecewise-linear energy makes piecewise constant
    energy = nn.Sequential(
        _sn(nn.Linear(2, h), sn), nn.SiLU(),
        _sn(nn.Linear(h, h), sn), nn.SiLU(),
        _sn(nn.Linear(h, h), sn), nn.SiLU(),
        _sn(nn.Linear(h, 1), sn),
    )  # fmt: skip
    return generator, energy


def _conv_pair(params: ModelParams, channels: int, side: int) -> tuple[nn.Module, nn.Module]:
    base = base_side(side)
    n_up = int(math.log2(side // base))  # base x base -> side x side by stride-2 blocks
    top = params.channels * 2**n_up
    g_layers: list[nn.Module] = [
        nn.Linear(params.z_dim, top * base**2),
        nn.Unflatten(1, (top, base, base)),  # (B, top, base, base)
        nn.BatchNorm2d(top),
        nn.ReLU(),
    ]
    e_width = params.energy_channels or params.channels
    # built in this order (E's first layer before G's blocks) so that a seed gives the weights it always gave
    e_layers: list[nn.Module] = [_sn(nn.Conv2d(channels, e_width, 3, 1, 1), params.spectral_norm), nn.SiLU()]
    width = top
    for _ in range(n_up):
        g_layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU()]
        width //= 2  # spatial side doubles
    g_layers += [nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()]  # (B, C, side, side) in [-1, 1]
    width = e_width
    for _ in range(n_up):
        e_layers += [_sn(nn.Conv2d(width, width * 2, 4, 2, 1), params.spectral_norm), nn.SiLU()]
        width *= 2  # spatial side halves
    e_layers += [nn.Flatten(), _sn(nn.Linear(width * base**2, 1), params.spectral_norm)]  # (B, width*base^2) -> (B, 1)
    return nn.Sequential(*g_layers), nn.Sequential(*e_layers)


def build_models(params: ModelParams, data_shape: tuple[int, ...]) -> tuple[Generator, EnergyNet]:
    """Both networks for data of shape (2,) or (C, H, W), freshly initialised from torch's RNG."""
    if is_image_shape(data_shape):
        channels, side, _ = data_shape
        g_body, e_body = _conv_pair(params, channels, side)
    else:
        g_body, e_body = _mlp_pair(params)
    return Generator(params.z_dim, g_body, tuple(data_shape)), EnergyNet(e_body)
