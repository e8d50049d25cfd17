"""Streamed batches (DataLoader, workers) against the data set held as one tensor, in the real loop.

Both arms run `cdgan.train.fit` with the same params from the same weights; only where the real batches come
from differs. The stream is built (and its workers started) before the clock starts: that cost is paid once
per run. On the CPU the tensor arm is the one `train.data_loading: auto` picks; the stream is for data sets
that would crowd a GPU, and this measures what it costs where it is not needed.
"""

from __future__ import annotations

from benchmarks.arms import fit_arm, project_params
from benchmarks.timing import interleaved, median, note

from cdgan.data import build_dataset
from cdgan.params import Params

WORKERS = (0, 2)


def measure(quick: bool) -> dict[str, object]:
    steps, repeats = (40, 5) if quick else (200, 9)

    def stacked(**train: object) -> Params:
        return project_params("stacked-digits", steps=steps, eval_every=0, **train)

    params = stacked()
    x = build_dataset(params.data).x
    note(f"streaming on stacked-digits {x.shape}: {steps} steps per timing, {repeats} interleaved repeats")
    arms = {"tensor": fit_arm(params, x)}
    arms |= {f"workers_{w}": fit_arm(stacked(data_loading="stream", num_workers=w), x) for w in WORKERS}
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
