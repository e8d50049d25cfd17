"""Pure loss functions of energies, Langevin refinement on E, and the name-to-loss table.

Every loss is written on energies E(x); a classic GAN critic's output (a logit for BCE) is D(x) = -E(x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]


def refine_langevin(
    energy: EnergyFn,
    x: Tensor,
    k: int,
    step_size: float,
    noise: float,
    clamp: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    grad_clip: float = 0.0,
    draw_noise: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """x_k after k steps of x <- x - step_size * dE/dx + noise * eps, detached from every graph.

    k = 0 returns `x` detached. Short-run MCMC as in IGEBM: a small step noise, chain started from G(z).
    eps is standard normal from `generator`, or `draw_noise(x)` when given (e.g. a rank's share of a global draw).
    """
    x = x.detach()
    for _ in range(k):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        if grad_clip > 0:
            grad = grad.clamp(-grad_clip, grad_clip)
        x = x.detach() - step_size * grad
        if noise > 0:
            eps = (
                torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                if draw_noise is None
                else draw_noise(x)
            )
            x = x + noise * eps
        if clamp is not None:
            x = x.clamp(*clamp)
    return x


def energy_magnitude(e_real: Tensor, e_fake: Tensor) -> Tensor:
    return e_real.square().mean() + e_fake.square().mean()


def cd_loss(e_real: Tensor, e_fake: Tensor) -> Tensor:
    """Energy-net loss CD_k = E_p[E] - E_q[E(x_k)]: real energy down, sampled (refined) energy up."""
    return e_real.mean() - e_fake.mean()


def bce_loss(e_real: Tensor, e_fake: Tensor) -> Tensor:
    # BCE with logit D = -E: -log sigmoid(-E_real) - log(1 - sigmoid(-E_fake))
    return F.softplus(e_real).mean() + F.softplus(-e_fake).mean()


def bce_generator_loss(e_gen: Tensor) -> Tensor:
    return F.softplus(e_gen).mean()  # non-saturating: -log sigmoid(D(G(z)))


def lsgan_loss(e_real: Tensor, e_fake: Tensor) -> Tensor:
    # LSGAN (Mao et al.) with targets 1 for real, 0 for fake on D = -E
    return 0.5 * ((-e_real - 1).square().mean() + e_fake.square().mean())


def lsgan_generator_loss(e_gen: Tensor) -> Tensor:
    return 0.5 * (-e_gen - 1).square().mean()


def hinge_loss(e_real: Tensor, e_fake: Tensor) -> Tensor:
    return F.relu(1 + e_real).mean() + F.relu(1 - e_fake).mean()


def critic_generator_loss(e_gen: Tensor) -> Tensor:
    return e_gen.mean()  # lower E(G(z)); -D(G(z)) for hinge and WGAN


def gradient_penalty(energy: EnergyFn, x_real: Tensor, x_fake: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al.): (|dE/dx| - 1)^2 on the interpolates alpha * real + (1 - alpha) * fake, with
    alpha (N,) uniform in [0, 1], drawn by the caller (under torchrun: a share of one global draw)."""
    alpha = alpha.view(-1, *[1] * (x_real.dim() - 1))
    x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def real_gradient_penalty(energy: EnergyFn, x_real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): mean |dE/dx|^2 on real data, keeping the energy smooth where data lies."""
    x = x_real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x).sum(), x, create_graph=True)
    return grad.flatten(1).square().sum(1).mean()


class Loss(NamedTuple):
    energy: Callable[[Tensor, Tensor], Tensor]  # (e_real, e_fake) -> loss of E
    generator: Callable[[Tensor], Tensor]  # e_gen -> loss of G
    is_unbounded: bool  # energies can drift without limit: add the magnitude penalty (train.energy_reg)
    has_gradient_penalty: bool
    refines_negatives: bool  # the negatives are G(z) (or replayed samples) after train.cd_k Langevin steps on E


# WGAN's critic loss is the k = 0 energy gap; what makes it WGAN-GP is the gradient penalty
LOSSES: dict[str, Loss] = {
    "cd": Loss(cd_loss, critic_generator_loss, True, False, True),
    "bce": Loss(bce_loss, bce_generator_loss, False, False, False),
    "lsgan": Loss(lsgan_loss, lsgan_generator_loss, False, False, False),
    "hinge": Loss(hinge_loss, critic_generator_loss, False, False, False),
    "wgan-gp": Loss(cd_loss, critic_generator_loss, False, True, False),
}
