"""`cdgan sample`: samples from a registered model (the champion by default) or from a generator file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdgan import registry, tracking
from cdgan.data import load_dataset
from cdgan.errors import CdganError
from cdgan.files import write_atomic
from cdgan.params import Params, Paths
from cdgan.sampler import draw_samples
from cdgan.stages.trained import load_trained


def sample(
    params: Params,
    paths: Paths,
    n: int,
    seed: int,
    out: Path,
    model_uri: str | None = None,
    generator_path: Path | None = None,
) -> Path:
    """n samples to `out` (.npy): from --generator with the current params, else a registered model."""
    if n <= 0:
        raise CdganError(f"--n must be > 0 (got {n})")
    if generator_path is not None:
        generator, energy = load_trained(params, paths, load_dataset(paths.dataset).shape, generator_path)
        x = draw_samples(generator, energy, n, seed, params.sample).numpy()
    else:
        tracking.connect(paths)
        uri = model_uri or f"models:/{params.register.model_name}@{registry.CHAMPION}"
        x = registry.load_sampler(uri).sample(n, seed)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, x)

    return write_atomic(out, write)
