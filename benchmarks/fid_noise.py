"""How much FID moves with the draw of samples alone: one trained model, its reference points, several
`evaluate.seed`s, at each sample count. The spread is what `evaluate.n_samples` buys; it sets how far apart two
models must score before the difference means anything.

    python -m benchmarks.fid_noise --project sweeps/NAME/TRIAL --n 2000 10000 --seeds 6

`--project`: a directory where prepare and train have run (data/prepared/, models/, params.yaml). Prints JSON:
per sample count, the model's `fid`, `fid_floor` and `fid_gmm` over the seeds (values, mean with its 95 %
interval, standard deviation). `run.py --only fid_noise` runs the same, on `--project` or, without it, on a
tiny model it trains in a throwaway project. It measures a metric, not speed: a t-interval over seeds, no ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from benchmarks.harness import Size, note, own_store, prepare_project, quiet_bar, tiny_raw, torch_globals
from benchmarks.stats import mean_interval, rounded_interval

from cdgan.data import load_dataset
from cdgan.evaluation import build_suite, reference_points, score_model
from cdgan.params import Params, Paths, load_params, parse_params
from cdgan.stages import train as train_stage
from cdgan.stages.trained import load_trained

KEYS = ("fid", "fid_floor", "fid_gmm")
SIZES = {"smoke": ((100, 200), 2), "quick": ((500, 2000), 3), "full": ((2000, 10000), 6)}  # (n_samples, seeds)


def spread(params: Params, paths: Paths, n_samples: int, seeds: int) -> dict[str, object]:
    """`KEYS` over `seeds` draws of `n_samples` samples from the project's trained model."""
    train_split, heldout = load_dataset(paths.dataset), load_dataset(paths.heldout)
    generator, energy = load_trained(params, paths, train_split.shape)
    values: dict[str, list[float]] = {key: [] for key in KEYS}
    for seed in range(seeds):
        note(f"fid_noise: n_samples {n_samples}, seed {seed}")
        ev = params.evaluate.model_copy(update={"seed": seed, "n_samples": n_samples, "metrics": ["fid"]})
        suite = build_suite(params.data.dataset, heldout, paths.classifier, ev, torch.device("cpu"))
        scores = score_model(suite, generator, energy, params.sample).metrics | reference_points(suite, train_split)
        for key in KEYS:
            values[key].append(scores[key])
    return {
        key: {
            "values": [round(v, 3) for v in vs],
            "mean": rounded_interval(mean_interval(vs), 3),
            "std": round(statistics.stdev(vs), 3),
        }
        for key, vs in values.items()
    }


def _spreads(project: Path, counts: tuple[int, ...], seeds: int) -> dict[str, object]:
    params, paths = load_params(project / "params.yaml"), Paths(root=project, project=project)
    return {"project": str(project), "seeds": seeds} | {
        f"n_samples={n}": spread(params, paths, n, seeds) for n in counts
    }


def fid_noise(size: Size, project: Path | None = None) -> dict[str, object]:
    """FID, its floor and its mixture reference over sample draws at each sample count, on `project`'s trained
    model or, without one, on a tiny digits model trained here (prepare and train in-process, tiny params)."""
    counts, seeds = SIZES[size]
    if project is not None:
        return {"fid_noise": _spreads(project, counts, seeds)}
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-fid-") as tmp:
        root = Path(tmp) / "project"
        raw = tiny_raw()
        params = parse_params(raw, "tiny params (fid_noise)")
        note("fid_noise: training a tiny digits model in a throwaway project")
        paths = prepare_project(root, params)
        (root / "params.yaml").write_text(json.dumps(raw))  # YAML is a superset of JSON
        with own_store(root), torch_globals(), quiet_bar():
            train_stage.train(params, paths)
        return {"fid_noise": _spreads(root, counts, seeds) | {"project": "tiny (benchmarks.harness.TINY)"}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="prepared and trained project directory")
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000], help="sample counts to compare")
    parser.add_argument("--seeds", type=int, default=6, help="evaluate seeds (sample draws) per count")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(_spreads(args.project, tuple(args.n), args.seeds), indent=2))


if __name__ == "__main__":
    main()
