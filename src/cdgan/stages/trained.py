"""What the stages after `train` share: the trained networks loaded back from models/, and the label of a run."""

from __future__ import annotations

from pathlib import Path

from cdgan.errors import CdganError
from cdgan.files import load_torch
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import Params, Paths


def load_trained(
    params: Params, paths: Paths, data_shape: tuple[int, ...], generator_path: Path | None = None
) -> tuple[Generator, EnergyNet]:
    """models/generator.pt and energy.pt (or `generator_path` and the energy.pt beside it), in eval mode."""
    generator_path = generator_path or paths.generator
    generator, energy = build_models(params.model, data_shape)
    try:
        generator.load_state_dict(load_torch(generator_path, "generator"))
        energy.load_state_dict(load_torch(generator_path.parent / paths.energy.name, "energy net"))
    except RuntimeError as err:  # shape mismatch: the file was trained with other model params
        raise CdganError(f"{generator_path}: does not match params.yaml model section ({err}); retrain") from None
    return generator.eval(), energy.eval()


def loss_label(params: Params) -> str:
    return f"cd k={params.train.cd_k}" if params.train.loss == "cd" else params.train.loss  # k is CD's alone
