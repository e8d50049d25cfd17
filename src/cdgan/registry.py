"""The MLflow model: a pyfunc sampler over the generator (and energy net), registration, the champion gate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from cdgan.errors import CdganError
from cdgan.files import load_torch, save_torch
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams
from cdgan.sampler import draw_samples

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Bundle:
    """What a sampler needs: both networks and how to refine G(z) on E."""

    generator: Generator
    energy: EnergyNet
    langevin_steps: int
    step_size: float
    noise: float

    def sample(self, n: int, seed: int) -> np.ndarray:
        return draw_samples(
            self.generator, self.energy, n, seed, self.langevin_steps, self.step_size, self.noise
        ).numpy()


def save_bundle(
    path: Path,
    model: ModelParams,
    data_shape: tuple[int, ...],
    generator_state: dict,
    energy_state: dict,
    sampling: dict[str, Any],
) -> Path:
    return save_torch(
        path,
        {
            "model": model.model_dump(),
            "data_shape": list(data_shape),
            "generator": generator_state,
            "energy": energy_state,
            "sampling": sampling,
        },
    )


def load_bundle(path: Path) -> Bundle:
    saved = load_torch(path, "model bundle")
    generator, energy = build_models(ModelParams(**saved["model"]), tuple(saved["data_shape"]))
    generator.load_state_dict(saved["generator"])
    energy.load_state_dict(saved["energy"])
    return Bundle(generator.eval(), energy.eval(), **saved["sampling"])


class Sampler(mlflow.pyfunc.PythonModel):
    """pyfunc model: a table with columns `n` and optional `seed` -> samples, rows concatenated.

    Output: (sum n, 2) points or (sum n, C, H, W) images in [-1, 1], float32.
    """

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        seeds = model_input["seed"] if "seed" in model_input else pd.Series([0] * len(model_input))
        parts = [self.bundle.sample(int(n), int(seed)) for n, seed in zip(model_input["n"], seeds, strict=True)]
        return np.concatenate(parts).astype(np.float32)


def log_sampler(bundle_path: Path) -> str:
    """Log the pyfunc sampler into the active run; returns its model URI."""
    example = pd.DataFrame({"n": [2], "seed": [0]})
    data_shape = load_bundle(bundle_path).generator.data_shape
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *data_shape))]),
    )
    info = mlflow.pyfunc.log_model(
        name="sampler",
        python_model=Sampler(),
        artifacts={"bundle": str(bundle_path)},
        signature=signature,
        input_example=example,
    )
    return info.model_uri


def load_sampler(model_uri: str) -> Bundle:
    """The bundle behind any logged or registered sampler URI (models:/cdgan@champion, runs:/..., ...)."""
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().bundle
    except MlflowException as err:
        raise CdganError(
            f"cannot load model {model_uri} ({err.message}); run the pipeline (dvc repro) first, "
            "or pass --model-uri or --generator models/generator.pt"
        ) from None


@dataclass(frozen=True)
class Registration:
    version: int
    alias: str
    reason: str


def register_version(
    model_uri: str,
    name: str,
    metric: str,
    value: float,
    lower_is_better: bool,
    comparable: dict[str, str],
    min_improvement: float,
    force: bool = False,
) -> Registration:
    """Register a new version; it becomes `champion` only if it beats the champion by `min_improvement`
    on `metric`, measured on the same `comparable` terms (data set, feature extractor)."""
    client = MlflowClient()
    version = mlflow.register_model(model_uri, name)
    for key, tag in {**comparable, "metric": metric, metric: str(value)}.items():
        client.set_model_version_tag(name, version.version, key, tag)
    alias, reason = _decide_alias(client, name, metric, value, lower_is_better, comparable, min_improvement)
    if force and alias != CHAMPION:
        alias, reason = CHAMPION, f"forced (--force) over: {reason}"
    client.set_registered_model_alias(name, alias, version.version)
    client.set_model_version_tag(name, version.version, "alias_reason", reason)
    return Registration(int(version.version), alias, reason)


def _decide_alias(
    client: MlflowClient,
    name: str,
    metric: str,
    value: float,
    lower_is_better: bool,
    comparable: dict[str, str],
    margin: float,
) -> tuple[str, str]:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return CHAMPION, "first version"
    mismatch = {k: (champion.tags.get(k), v) for k, v in comparable.items() if champion.tags.get(k) != v}
    if mismatch or metric not in champion.tags:
        return CHALLENGER, f"not comparable with champion v{champion.version}: {mismatch or metric + ' missing'}"
    best = float(champion.tags[metric])
    gain = best - value if lower_is_better else value - best
    if gain > margin:
        return CHAMPION, f"{metric} {value:.4g} beats champion v{champion.version} ({best:.4g})"
    return CHALLENGER, f"{metric} {value:.4g} does not beat champion v{champion.version} ({best:.4g}) by > {margin}"
