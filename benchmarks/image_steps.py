"""Step cost of the real-image presets (MNIST at 28x28, stacked MNIST) against the 8x8 digits default.

One training step through the real loop (`cdgan.train.fit`, nothing logged or saved) with each preset's networks
and batch, fresh weights per timing; the arms interleave (A B C, C B A, ...) and each preset's cost is a paired
ratio to the digits step with its interval. The absolute milliseconds are reported beside it, with the threads
they ran on: `presets/*.yaml` state training times that follow from them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from benchmarks.arms import no_log
from benchmarks.stats import ratio_interval, rounded_interval
from benchmarks.timing import REPO, Timing, interleaved, median, note, timed

from cdgan.data import build_dataset
from cdgan.params import Params, load_params
from cdgan.presets import load_preset
from cdgan.train import fit, init_state

PRESETS = {"digits": None, "mnist10k": "mnist10k.yaml", "stacked-mnist": "stacked-mnist.yaml"}


def _params(preset: str | None) -> Params:
    params = (
        load_params(REPO / "params.yaml")
        if preset is None
        else load_preset(REPO / "presets" / preset, REPO / "params.yaml")
    )
    return params.model_copy(update={"train": params.train.model_copy(update={"device": "cpu", "eval_every": 0})})


def _step_arm(params: Params, x: np.ndarray, steps: int) -> Callable[[], Timing]:
    train = params.train.model_copy(update={"steps": steps})
    x_data = torch.from_numpy(x)

    def arm() -> Timing:
        state = init_state(params.model, train, tuple(x.shape[1:]), torch.device("cpu"))
        return timed(lambda: fit(state, x_data, train, no_log)) / steps

    return arm


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (5, 5) if quick else (20, 7)
    arms = {}
    for name, preset in PRESETS.items():
        params = _params(preset)
        x = build_dataset(params.data).x[:5000]  # enough rows for the batches; building stacks is not timed
        arms[name] = _step_arm(params, x, steps)
    note(f"image step cost: {list(arms)}, {steps} steps per timing, {repeats} interleaved rounds")
    for arm in arms.values():
        arm()  # warm-up: allocator and autograd set-up
    seconds = interleaved(arms, repeats)
    base = seconds["digits"]["cpu"]
    return {
        "image_step_ms": {name: round(median(s["wall"]) * 1e3, 1) for name, s in seconds.items()},
        "image_step_cpu_ms": {name: round(median(s["cpu"]) * 1e3, 1) for name, s in seconds.items()},
        "image_step_cost_vs_digits": {
            name: rounded_interval(ratio_interval(s["cpu"], base)) for name, s in seconds.items() if name != "digits"
        },
        "image_step_threads": torch.get_num_threads(),
        "image_step_settings": {"steps_per_timing": steps, "rounds": repeats},
    }
