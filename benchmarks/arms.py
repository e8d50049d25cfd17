"""The real training loop (`cdgan.train.fit`) as a benchmark arm, on the repo's params, without the stage's
tracking: what the benchmarks that need no MLflow (the GPU one among them) import."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import yaml
from benchmarks.timing import REPO, Timing, timed

from cdgan.data import device_or_stream
from cdgan.params import Params, parse_params
from cdgan.train import fit, init_state

CPU = torch.device("cpu")


def project_params(dataset: str, **train: object) -> Params:
    """The repo's params.yaml on the CPU for `dataset`, with `train` overrides (a 1-epoch FID classifier)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"] = {**raw["data"], "dataset": dataset, "classifier_epochs": 1}
    raw["train"] = {**raw["train"], "device": "cpu", **train}
    return parse_params(raw, "benchmark params")


@contextmanager
def torch_globals() -> Iterator[None]:
    """`stages.train` switches on deterministic algorithms and reseeds torch; undo both afterwards."""
    deterministic, rng = torch.are_deterministic_algorithms_enabled(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng)


def no_log(step: int, values: dict[str, float]) -> None:
    """`fit`'s log callable when nothing is tracked."""


def fit_arm(params: Params, x: np.ndarray, device: torch.device = CPU) -> Callable[[], Timing]:
    """`cdgan.train.fit` alone from fresh weights, nothing logged or saved, its data on the device or streamed
    as `stages.train` would; the clock stops when the device is done."""

    def arm() -> Timing:
        with torch_globals():
            state = init_state(params.model, params.train, tuple(x.shape[1:]), device)
            real = device_or_stream(params.train, x, 0, device)

            def run() -> None:
                fit(state, real, params.train, no_log)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            return timed(run)

    return arm
