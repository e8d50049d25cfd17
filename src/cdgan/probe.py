"""The vanishing-gradient probe: train the energy net toward its optimum against a frozen generator and
watch how much gradient each loss still sends to the generator (Arjovsky & Bottou 2017, section 2.2).

`probe` is the `cdgan probe` tool around it: prepared data in, a CSV and a plot out. It is no pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from cdgan.data import load_dataset
from cdgan.devices import resolve_device
from cdgan.errors import CdganError
from cdgan.losses import LOSSES
from cdgan.params import ModelParams, Params, Paths, TrainParams
from cdgan.pictures import save_curves_png
from cdgan.report import write_csv
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


@dataclass(frozen=True)
class ProbeResult:
    csv: Path
    png: Path
    rows: list[dict[str, float | str]]


def probe(params: Params, paths: Paths, losses: list[str], critic_steps: list[int], out_dir: Path) -> ProbeResult:
    """The probe on the prepared data: generator gradient norm per loss as the energy net trains against a
    frozen generator; writes <out_dir>/gradient_probe.{csv,png}."""
    unknown = sorted(set(losses) - set(LOSSES))
    if unknown or not losses:
        raise CdganError(f"--losses {','.join(unknown) or '(none)'}: choose from {', '.join(LOSSES)}")
    if not critic_steps or min(critic_steps) < 0:
        raise CdganError(f"--critic-steps must be counts >= 0 (got {critic_steps})")
    real = load_dataset(paths.dataset)
    device = resolve_device(params.train.device)
    rows = gradient_probe(torch.from_numpy(real.x).to(device), params.model, params.train, losses, critic_steps)
    csv_path = out_dir / "gradient_probe.csv"
    write_csv(csv_path, rows)
    title = f"{params.data.dataset}: generator gradient vs energy-net steps (frozen G)"
    png = save_curves_png(
        out_dir / "gradient_probe.png", rows, "critic_steps", "grad_norm_g", "loss", title, log_y=True
    )
    return ProbeResult(csv_path, png, rows)
