"""Streamed batches (DataLoader, workers) against the data set held as one tensor, in the real loop.

Both arms run `cdgan.train.fit` with the same params from the same weights; only where the real batches come
from differs. The stream is built (and its workers started) before the clock starts: that cost is paid once
per run. On the CPU the tensor arm is the one `train.data_loading: auto` picks; the stream is for data sets
that would crowd a GPU, and this measures what it costs where it is not needed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from benchmarks.throughput import no_log, project_params
from benchmarks.timing import Timing, interleaved, median, note, timed

from cdgan.data import StreamedBatches, build_dataset
from cdgan.params import Params
from cdgan.train import RealData, fit, init_state

CPU = torch.device("cpu")
WORKERS = (0, 2)


def _arm(params: Params, x: np.ndarray, workers: int | None) -> Callable[[], Timing]:
    """Seconds of `fit` over params.train.steps; `workers` None: the data as one tensor."""
    train = params.train

    def arm() -> Timing:
        state = init_state(params.model, train, tuple(x.shape[1:]), CPU)
        real: RealData = (
            torch.from_numpy(x)
            if workers is None
            else StreamedBatches(x, train.batch_size, train.seed, 0, CPU, workers)
        )
        return timed(lambda: fit(state, real, train, no_log))

    return arm


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (40, 5) if quick else (200, 9)
    params = project_params("stacked-digits", steps=steps, eval_every=0)
    x = build_dataset(params.data).x
    note(f"streaming on stacked-digits {x.shape}: {steps} steps per timing, {repeats} interleaved repeats")
    arms = {"tensor": _arm(params, x, None)} | {f"workers_{w}": _arm(params, x, w) for w in WORKERS}
    for arm in arms.values():
        arm()  # warm-up
    seconds = interleaved(arms, repeats)
    tensor = median(seconds["tensor"]["wall"])
    examples = steps * params.train.batch_size
    return {
        "stream_throughput_ratio": {  # streamed examples/s over the tensor's, wall time
            name: round(tensor / median(seconds[name]["wall"]), 4) for name in arms if name != "tensor"
        },
        "streaming": {
            "dataset": "stacked-digits",
            "shape": list(x.shape),
            "steps": steps,
            "batch_size": params.train.batch_size,
            "repeats": repeats,
            "examples_per_s": {name: round(examples / median(s["wall"]), 1) for name, s in seconds.items()},
            "examples_per_cpu_s": {name: round(examples / median(s["cpu"]), 1) for name, s in seconds.items()},
        },
    }
