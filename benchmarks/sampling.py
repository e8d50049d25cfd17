"""Cost of the model's output per sample: Langevin refinement in data or latent space against raw G(z).

Untrained networks of the shipped params.yaml (cost does not depend on the weights), 500 samples a call as
`evaluate` draws them; a latent step also runs the generator forward and backward, a data step only E.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from benchmarks.timing import Timing, interleaved, median, note, paired_ratio, timed

from cdgan.models import build_models
from cdgan.params import ModelParams, SampleParams
from cdgan.sampler import draw_samples

SHAPES = {"digits": (1, 8, 8), "grid25": (2,)}
N = 500


def _arm(shape: tuple[int, ...], sampling: SampleParams) -> Callable[[], Timing]:
    torch.manual_seed(0)
    generator, energy = build_models(ModelParams(), shape)
    return lambda: timed(lambda: draw_samples(generator, energy, N, 0, sampling)) / N


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (20, 3) if quick else (100, 7)
    out: dict[str, object] = {}
    for name, shape in SHAPES.items():
        note(f"sampling {name}: raw, {steps} Langevin steps in data and in latent space")
        arms = {
            "raw": _arm(shape, SampleParams()),
            "data": _arm(shape, SampleParams(space="data", langevin_steps=steps, temperature=1.0)),
            "latent": _arm(shape, SampleParams(space="latent", langevin_steps=steps, temperature=1.0)),
        }
        runs = interleaved(arms, repeats)
        raw = runs["raw"]["wall"]
        out[f"sampling_{name}"] = {
            "langevin_steps": steps,
            "repeats": repeats,
            "raw_us_per_sample": round(median(raw) * 1e6, 2),
            **{f"{space}_us_per_sample": round(median(runs[space]["wall"]) * 1e6, 2) for space in ("data", "latent")},
            **{f"{space}_vs_raw": round(paired_ratio(runs[space]["wall"], raw), 2) for space in ("data", "latent")},
            "latent_vs_data": round(paired_ratio(runs["latent"]["wall"], runs["data"]["wall"]), 2),
        }
    return out
