"""Tests for cdgan.losses: loss values on hand-made energies, gradient signs, Langevin chain properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from cdgan.losses import (
    LOSSES,
    bce_generator_loss,
    bce_loss,
    cd_loss,
    critic_generator_loss,
    energy_magnitude,
    gradient_penalty,
    hinge_loss,
    lsgan_generator_loss,
    lsgan_loss,
    refine_langevin,
)

E_REAL = torch.tensor([-1.5, 0.25, 2.0], dtype=torch.float64)
E_FAKE = torch.tensor([0.5, -3.0], dtype=torch.float64)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _quadratic(centre: Tensor):
    """Convex energy E(x) = 0.5 * |x - centre|^2 per row, minimum 0 at `centre`."""
    return lambda x: 0.5 * (x - centre).square().flatten(1).sum(1)


# --- CD loss -------------------------------------------------------------------------------------------------------


def test_cd_loss_is_mean_energy_gap() -> None:
    # given hand-made energies of different batch sizes
    # when
    loss = cd_loss(E_REAL, E_FAKE)
    # then it is mean(e_real) - mean(e_fake), computed by hand
    expected = (-1.5 + 0.25 + 2.0) / 3 - (0.5 - 3.0) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_cd_loss_gradient_pushes_real_energy_down_and_fake_energy_up() -> None:
    # given
    e_real, e_fake = E_REAL.clone().requires_grad_(True), E_FAKE.clone().requires_grad_(True)
    # when
    cd_loss(e_real, e_fake).backward()
    # then descending the loss lowers E(real) and raises E(fake), each by 1/batch per element
    assert torch.all(e_real.grad > 0), f"d cd / d e_real should be positive, got {e_real.grad}"
    assert torch.all(e_fake.grad < 0), f"d cd / d e_fake should be negative, got {e_fake.grad}"
    torch.testing.assert_close(e_real.grad, torch.full_like(E_REAL, 1 / 3))
    torch.testing.assert_close(e_fake.grad, torch.full_like(E_FAKE, -1 / 2))


def test_energy_magnitude_is_sum_of_mean_squares() -> None:
    expected = (1.5**2 + 0.25**2 + 2.0**2) / 3 + (0.5**2 + 3.0**2) / 2
    assert energy_magnitude(E_REAL, E_FAKE).item() == pytest.approx(expected, rel=1e-12)


# --- classic GAN losses on D = -E ----------------------------------------------------------------------------------


def test_bce_loss_matches_cross_entropy_on_critic_logits() -> None:
    # given D = -E as the logit; real target 1, fake target 0
    d_real, d_fake = (-E_REAL).tolist(), (-E_FAKE).tolist()
    expected = sum(-math.log(_sigmoid(d)) for d in d_real) / 3 + sum(-math.log(1 - _sigmoid(d)) for d in d_fake) / 2
    # when / then
    assert bce_loss(E_REAL, E_FAKE).item() == pytest.approx(expected, rel=1e-12)


def test_bce_generator_loss_is_non_saturating() -> None:
    # given generator samples with D(G(z)) = -E
    e_gen = torch.tensor([1.0, -2.0], dtype=torch.float64)
    expected = sum(-math.log(_sigmoid(-e)) for e in e_gen.tolist()) / 2
    # when / then: -log D, not log(1 - D)
    assert bce_generator_loss(e_gen).item() == pytest.approx(expected, rel=1e-12)


def test_bce_generator_gradient_survives_when_critic_is_confident() -> None:
    # given the critic is sure the sample is fake (E very high, D = -E very low)
    e_gen = torch.tensor([20.0], dtype=torch.float64, requires_grad=True)
    # when
    bce_generator_loss(e_gen).backward()
    # then the non-saturating loss still pushes E(G(z)) down with a gradient near 1, not near 0
    assert e_gen.grad.item() == pytest.approx(1.0, abs=1e-6)


def test_lsgan_loss_matches_hand_computation() -> None:
    # given targets 1 (real) and 0 (fake) on D = -E
    expected = 0.5 * (sum((-e - 1) ** 2 for e in E_REAL.tolist()) / 3 + sum((-e) ** 2 for e in E_FAKE.tolist()) / 2)
    assert lsgan_loss(E_REAL, E_FAKE).item() == pytest.approx(expected, rel=1e-12)


def test_lsgan_generator_loss_targets_real_label() -> None:
    e_gen = torch.tensor([0.5, -1.0], dtype=torch.float64)
    expected = 0.5 * ((-0.5 - 1) ** 2 + (1.0 - 1) ** 2) / 2
    assert lsgan_generator_loss(e_gen).item() == pytest.approx(expected, rel=1e-12)


def test_hinge_loss_matches_hand_computation() -> None:
    # given D = -E: relu(1 - D_real) + relu(1 + D_fake)
    expected = sum(max(0.0, 1 + e) for e in E_REAL.tolist()) / 3 + sum(max(0.0, 1 - e) for e in E_FAKE.tolist()) / 2
    assert hinge_loss(E_REAL, E_FAKE).item() == pytest.approx(expected, rel=1e-12)


def test_hinge_loss_is_zero_beyond_the_margin() -> None:
    # given real energies below -1 and fake energies above 1 (D_real > 1, D_fake < -1)
    e_real = torch.tensor([-1.5, -3.0], requires_grad=True)
    e_fake = torch.tensor([2.0, 1.5], requires_grad=True)
    # when
    loss = hinge_loss(e_real, e_fake)
    loss.backward()
    # then nothing is left to learn
    assert loss.item() == 0.0
    assert torch.all(e_real.grad == 0) and torch.all(e_fake.grad == 0)


def test_critic_generator_loss_is_mean_energy() -> None:
    e_gen = torch.tensor([0.5, -1.0, 3.0], dtype=torch.float64)
    assert critic_generator_loss(e_gen).item() == pytest.approx(2.5 / 3, rel=1e-12)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_energy_loss_lowers_real_and_raises_fake_energy(name: str) -> None:
    # given energies on the wrong side for every loss: fakes score better than LSGAN's fake target D = 0
    # and inside the hinge margins (D = -E is 0 on real data, 0.5 on fakes)
    e_real = torch.zeros(4, requires_grad=True)
    e_fake = torch.full((4,), -0.5, requires_grad=True)
    # when
    LOSSES[name].energy(e_real, e_fake).backward()
    # then a gradient step lowers real energies and raises fake ones
    assert torch.all(e_real.grad > 0), f"{name}: d loss / d e_real = {e_real.grad}"
    assert torch.all(e_fake.grad < 0), f"{name}: d loss / d e_fake = {e_fake.grad}"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_generator_loss_lowers_generated_energy(name: str) -> None:
    e_gen = torch.zeros(4, requires_grad=True)
    LOSSES[name].generator(e_gen).backward()
    assert torch.all(e_gen.grad > 0), f"{name}: d loss_g / d e_gen = {e_gen.grad}"


def test_loss_table_names_match_params_choices() -> None:
    from typing import get_args

    from cdgan.params import LossName

    assert set(LOSSES) == set(get_args(LossName))


def test_only_cd_gets_the_magnitude_penalty_and_only_wgan_gp_the_gradient_penalty() -> None:
    assert {n for n, loss in LOSSES.items() if loss.is_unbounded} == {"cd"}
    assert {n for n, loss in LOSSES.items() if loss.has_gradient_penalty} == {"wgan-gp"}


# --- gradient penalty ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 3.0, 0.25])
def test_gradient_penalty_closed_form_on_linear_energy(scale: float) -> None:
    # given E(x) = <w, x> with |w| = scale, so |dE/dx| = scale at every interpolate
    w = torch.tensor([3.0, 4.0], dtype=torch.float64) / 5 * scale
    x_real = torch.randn(6, 2, dtype=torch.float64)
    x_fake = torch.randn(6, 2, dtype=torch.float64)
    # when
    gp = gradient_penalty(lambda x: x @ w, x_real, x_fake, torch.rand(6, dtype=torch.float64))
    # then the penalty is (|w| - 1)^2, zero for a unit-norm direction
    assert gp.item() == pytest.approx((scale - 1) ** 2, abs=1e-12)


def test_gradient_penalty_closed_form_on_image_shaped_linear_energy() -> None:
    # given E(x) = sum of x over (C, H, W) = 1*2*2 pixels: |dE/dx| = sqrt(4) = 2
    x_real, x_fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    # when
    gp = gradient_penalty(lambda x: x.flatten(1).sum(1), x_real, x_fake, torch.rand(3))
    # then
    assert gp.item() == pytest.approx((2.0 - 1.0) ** 2, rel=1e-6)


def test_gradient_penalty_flows_to_energy_parameters() -> None:
    # given a parametrised linear energy whose gradient norm is 2
    w = torch.tensor([2.0, 0.0], requires_grad=True)
    # when
    gp = gradient_penalty(lambda x: x @ w, torch.randn(4, 2), torch.randn(4, 2), torch.rand(4))
    gp.backward()
    # then d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w| = (2, 0)
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 0.0]))


# --- Langevin refinement -------------------------------------------------------------------------------------------


def test_langevin_k0_returns_input_detached() -> None:
    # given an input that is part of a graph
    leaf = torch.randn(5, 2, requires_grad=True)
    x = leaf * 2
    # when
    out = refine_langevin(_quadratic(torch.zeros(2)), x, k=0, step_size=0.1, noise=1.0)
    # then values are unchanged and the result is cut from the graph
    assert torch.equal(out, x.detach())
    assert not out.requires_grad and out.grad_fn is None


def test_langevin_result_is_detached_and_input_untouched() -> None:
    # given
    x = torch.randn(5, 2, requires_grad=True)
    before = x.detach().clone()
    # when
    out = refine_langevin(_quadratic(torch.zeros(2)), x, k=3, step_size=0.1, noise=0.1)
    # then
    assert not out.requires_grad and out.grad_fn is None
    assert torch.equal(x.detach(), before), "refine_langevin modified its input in place"


def test_langevin_without_noise_descends_a_convex_energy_to_its_minimum() -> None:
    # given E(x) = 0.5 |x - c|^2 and chains started far from c
    centre = torch.tensor([1.0, -2.0], dtype=torch.float64)
    energy = _quadratic(centre)
    x = torch.randn(8, 2, dtype=torch.float64) * 3
    # when
    energies = [energy(refine_langevin(energy, x, k, step_size=0.1, noise=0.0)).mean().item() for k in range(0, 41, 5)]
    x_final = refine_langevin(energy, x, 200, step_size=0.1, noise=0.0)
    # then the mean energy decreases strictly along the chain ...
    assert all(b < a for a, b in itertools.pairwise(energies)), f"energy did not decrease: {energies}"
    # ... and gradient descent with step 0.1 contracts x - c by 0.9 per step, so x_k = c + 0.9^k (x_0 - c)
    torch.testing.assert_close(refine_langevin(energy, x, 5, 0.1, 0.0), centre + 0.9**5 * (x - centre))
    torch.testing.assert_close(x_final, centre.expand_as(x_final), atol=1e-8, rtol=0)


def test_langevin_is_deterministic_with_a_seeded_generator() -> None:
    # given
    energy = _quadratic(torch.zeros(2))
    x = torch.randn(6, 2)
    # when
    a = refine_langevin(energy, x, 4, 0.05, 0.3, generator=torch.Generator().manual_seed(7))
    b = refine_langevin(energy, x, 4, 0.05, 0.3, generator=torch.Generator().manual_seed(7))
    c = refine_langevin(energy, x, 4, 0.05, 0.3, generator=torch.Generator().manual_seed(8))
    # then
    assert torch.equal(a, b), "same seed gave different chains"
    assert not torch.equal(a, c), "different seeds gave the same chain: noise is not drawn from the generator"


def test_langevin_noise_scale_matches_parameter() -> None:
    # given a flat energy: every move is noise
    x = torch.zeros(20_000, 1, dtype=torch.float64)
    # when
    out = refine_langevin(lambda v: 0 * v.sum(1), x, 1, 0.1, noise=0.3, generator=torch.Generator().manual_seed(0))
    # then one step adds N(0, 0.3^2)
    assert out.std().item() == pytest.approx(0.3, rel=0.03)


def test_langevin_respects_clamp() -> None:
    # given an energy pulling images far outside [-1, 1] and strong noise
    energy = _quadratic(torch.full((1, 4, 4), 5.0))
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    # when
    out = refine_langevin(energy, x, 10, 0.5, 1.0, clamp=(-1.0, 1.0), generator=torch.Generator().manual_seed(0))
    # then every value stays in the box, and the pull toward 5 drives values to the upper bound
    assert out.min().item() >= -1.0 and out.max().item() <= 1.0
    assert (out == 1.0).float().mean().item() > 0.5


def test_langevin_gradient_clip_bounds_each_move() -> None:
    # given E(x) = 100 * sum(x): dE/dx = 100 everywhere
    x = torch.zeros(4, 2)
    moved = refine_langevin(lambda x: 100 * x.sum(1), x, k=1, step_size=0.1, noise=0.0, grad_clip=0.5)
    torch.testing.assert_close(moved, torch.full((4, 2), -0.05))


def test_real_gradient_penalty_is_squared_gradient_norm() -> None:
    from cdgan.losses import real_gradient_penalty

    w = torch.tensor([3.0, 4.0])  # E(x) = w.x: |dE/dx|^2 = 25
    assert real_gradient_penalty(lambda x: x @ w, torch.randn(8, 2)).item() == pytest.approx(25.0)
