"""The vanishing-gradient probe: train the energy net toward its optimum against a frozen generator and
watch how much gradient each loss still sends to the generator (Arjovsky & Bottou 2017, section 2.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from cdgan.losses import LOSSES
from cdgan.params import ModelParams, TrainParams
from cdgan.train import TrainState, energy_step, init_state

GRAD_BATCHES = 4  # batches averaged into each generator-gradient measurement


def generator_grad_norm(train: TrainParams, state: TrainState, n_batches: int = GRAD_BATCHES) -> float:
    """|d L_G / d theta_G| averaged over fresh latent batches; the generator is not stepped."""
    state.generator.zero_grad(set_to_none=True)
    for _ in range(n_batches):
        e_gen = state.energy(state.generator(state.generator.sample_z(train.batch_size, state.rng)))
        (LOSSES[train.loss].generator(e_gen) / n_batches).backward()
    grads = [p.grad.flatten() for p in state.generator.parameters() if p.grad is not None]
    norm = torch.cat(grads).norm().item()
    state.generator.zero_grad(set_to_none=True)
    state.energy.zero_grad(set_to_none=True)
    return norm


def gradient_probe(
    x_data: Tensor, model: ModelParams, train: TrainParams, losses: list[str], critic_steps: list[int]
) -> list[dict[str, float | str]]:
    """Rows (loss, critic_steps, grad_norm_g, loss_e, e_gap) at each count of energy-net steps.

    Every loss starts from the same seed, so the frozen generator and the initial energy net are identical.
    """
    rows: list[dict[str, float | str]] = []
    for loss in losses:
        params = train.model_copy(update={"loss": loss})
        state = init_state(model, params, tuple(x_data.shape[1:]), x_data.device)
        state.generator.eval()  # frozen: BatchNorm statistics included
        done, values = 0, {}
        for target in sorted(critic_steps):
            while done < target:
                values = energy_step(params, state, x_data)
                done += 1
            row = {"loss": loss, "critic_steps": done, "grad_norm_g": generator_grad_norm(params, state)}
            if values:
                row |= {"loss_e": values["loss_e"].item(), "e_gap": (values["e_fake"] - values["e_real"]).item()}
            rows.append(row)
    return rows
