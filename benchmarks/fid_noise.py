"""How much FID moves with the draw of samples alone: one trained model, its reference points, several
`evaluate.seed`s, at each sample count. The spread is what `evaluate.n_samples` buys; it sets how far apart two
models must score before the difference means anything.

    python -m benchmarks.fid_noise --project sweeps/NAME/TRIAL --n 2000 10000 --seeds 6

`--project`: a directory where prepare and train have run (data/prepared/, models/, params.yaml). Prints JSON:
per sample count, the model's `fid`, `fid_floor` and `fid_gmm` over the seeds (values, mean with its 95 %
interval, standard deviation). Not part of run.py: it needs a trained model, and it measures a metric, not speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from benchmarks.stats import mean_interval, rounded_interval
from benchmarks.timing import note

from cdgan.data import load_dataset
from cdgan.evaluation import build_suite, reference_points, score_model
from cdgan.params import Paths, load_params
from cdgan.stages.trained import load_trained

KEYS = ("fid", "fid_floor", "fid_gmm")


def spread(project: Path, n_samples: int, seeds: int) -> dict[str, object]:
    params = load_params(project / "params.yaml")
    paths = Paths(root=project, project=project)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True, help="prepared and trained project directory")
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000], help="sample counts to compare")
    parser.add_argument("--seeds", type=int, default=6, help="evaluate seeds (sample draws) per count")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {"project": str(args.project), "seeds": args.seeds}
    result |= {f"n_samples={n}": spread(args.project, n, args.seeds) for n in args.n}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
