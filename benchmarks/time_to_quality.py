"""Time to quality: training seconds on this machine until the model reaches its target, over training seeds.

Targets as `pipelines.flows.seconds_to_target` defines them: digits (params.yaml as it stands), the FID of
the Gaussian-mixture baseline (`fid_gmm`); grid25 (presets/grid25.yaml), all but one mode covered
(`modes_floor` - 1). Each seed trains through `cdgan.stages.train` in a throw-away project (MLflow, bar and
checkpoints as in a real run), scored every `SCORE_EVERY[dataset]` steps, and stops at the first score that
reaches the target, so a seed costs its own time to target and no more (the cap is the preset's `steps`).
Each score draws `evaluate.n_samples` samples, as the reference point behind the target does: FID's bias falls
with the sample count, so a score from fewer samples would chase a target it cannot be compared with.

Two departures from the pipeline's figure, both to make it a benchmark: scores come finer than
`train.eval_every`, and grid25 is scored on the model's output (G(z) refined as the preset's `sample` section
says, as `evaluate` scores it): the pipeline's history is raw G(z), which covers few of the 25 modes
(reports/grid25_cd_seeds_runs.csv, `modes_raw`), so its seconds_to_target is NaN there. Seconds are wall
time of the stage's loop up to the target step (earlier scores included, as the pipeline's mean seconds
per step includes them); CPU seconds (this process) beside them are steadier on a shared machine.

Training the seeds takes long, so `run.py --train-ttq` trains them and writes `results/time_to_quality.json`;
without it the benchmark reads that file, and the sweep reports (reports/*_runs.csv, column seconds_to_target)
as a cross-check. The figure is a t-interval over seeds, not a paired ratio: there is no baseline arm.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from benchmarks.harness import (
    PRESETS,
    REPO,
    Size,
    note,
    own_store,
    prepare_project,
    preset_params,
    quiet_bar,
    torch_globals,
)
from benchmarks.stats import mean_interval, rounded_interval

from cdgan.data import load_dataset
from cdgan.evaluation import build_suite, reference_points
from cdgan.params import Params, Paths
from cdgan.reference import build_scorer
from cdgan.sampler import draw_samples
from cdgan.stages import train as train_stage

SCORE_EVERY = {"digits": 250, "grid25": 100}  # steps between scores: a few seconds of training each
RESULTS = Path(__file__).parent / "results" / "time_to_quality.json"
# sweep reports whose rows are the default model of a data set: (file, {column: value}) for the rows to keep
TARGET_PRESETS = ("digits", "grid25")
SWEEP_ROWS = {
    "digits": ("reports/digits_lr2e-3_decay_n10k_runs.csv", {}),  # seeds 0-2 of params.yaml (lr 2e-3, lr_decay 0.5)
}


def _params(dataset: str, seed: int) -> Params:
    return preset_params(dataset, seed=seed, eval_every=SCORE_EVERY[dataset])


def _target(params: Params, paths: Paths) -> tuple[str, float, dict[str, float]]:
    """(metric, threshold, reference points) as evaluate computes them on this project's prepared data."""
    heldout, train = load_dataset(paths.heldout), load_dataset(paths.dataset)
    suite = build_suite(params.data.dataset, heldout, paths.classifier, params.evaluate, torch.device("cpu"))
    points = reference_points(suite, train)
    if "fid_gmm" in points:
        return "fid", points["fid_gmm"], points
    return "modes", points["modes_floor"] - 1, points


def _is_reached(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if metric == "fid" else value >= threshold


def _train_to_target(params: Params, paths: Paths, metric: str, threshold: float) -> dict[str, Any]:
    """One `stages.train` that stops at the first score reaching the target; the score history with times."""
    real = load_dataset(paths.dataset)
    scorer = build_scorer(params.data.dataset, real, paths.classifier)
    history: list[dict[str, float]] = []
    real_fit = train_stage.fit

    def fit_to_target(*args: Any, **kwargs: Any) -> Any:
        call = inspect.signature(real_fit).bind(*args, **kwargs)
        state, train = call.arguments["state"], call.arguments["params"]
        wall0, cpu0 = time.perf_counter(), time.process_time()

        def score(generator: Any, energy: Any) -> dict[str, float]:
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0  # up to this step
            values = scorer(draw_samples(generator, energy, params.evaluate.n_samples, train.seed, params.sample))
            history.append({"step": state.step, "seconds": wall, "cpu_seconds": cpu, metric: values[metric]})
            if _is_reached(metric, values[metric], threshold):
                state.step = train.steps  # the loop's own stop test ends the run after this step
            return values

        call.arguments["score"] = score
        return real_fit(*call.args, **call.kwargs)

    with mock.patch.object(train_stage, "fit", fit_to_target), torch_globals(), quiet_bar():
        train_stage.train(params, paths)
    hit = next((row for row in history if _is_reached(metric, row[metric], threshold)), None)
    return {
        "seed": params.train.seed,
        "steps_to_target": hit["step"] if hit else math.nan,
        "seconds_to_target": hit["seconds"] if hit else math.nan,
        "cpu_seconds_to_target": hit["cpu_seconds"] if hit else math.nan,
        "history": history,
    }


def train_seeds(dataset: str, seeds: list[int]) -> dict[str, Any]:
    """Every seed in one throw-away project (the prepared data and target do not depend on the train seed)."""
    params = _params(dataset, seeds[0])
    with tempfile.TemporaryDirectory(prefix="cdgan-bench-ttq-") as tmp, own_store(Path(tmp)):
        paths = prepare_project(Path(tmp) / "project", params)
        metric, threshold, points = _target(params, paths)
        note(f"time to quality on {dataset}: target {metric} {'<=' if metric == 'fid' else '>='} {threshold:.4g}")
        runs = []
        for seed in seeds:
            runs.append(_train_to_target(_params(dataset, seed), paths, metric, threshold))
            note(f"  seed {seed}: {runs[-1]['seconds_to_target']:.1f} s, step {runs[-1]['steps_to_target']}")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return {"dataset": dataset, "preset": str(PRESETS[dataset].relative_to(REPO)), "measured_at": stamp,
            "metric": metric, "threshold": threshold, "reference_points": points, "score_every": SCORE_EVERY[dataset],
            "cap_steps": params.train.steps, "scored_on": _scored_on(params), "runs": runs}  # fmt: skip


def _scored_on(params: Params) -> str:
    count = f"{params.evaluate.n_samples} samples a score, as many as the target's reference point"
    if params.sample.langevin_steps == 0:
        return f"raw G(z) (the model's output: sample.langevin_steps 0), {count}"
    return f"the model's output: G(z) after {params.sample.langevin_steps} Langevin steps (sample section), {count}"


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    """Intervals over seeds of seconds, CPU seconds and steps to target; seeds that never reached it are
    counted and left out of the intervals (and make the figure a lower bound: say so)."""
    runs = measured["runs"]
    reached = [run for run in runs if not math.isnan(run["seconds_to_target"])]
    out = {key: measured[key] for key in ("preset", "metric", "threshold", "score_every", "cap_steps", "scored_on")}
    out |= {"seeds": [run["seed"] for run in runs], "seeds_not_reached": [r["seed"] for r in runs if r not in reached]}
    for key in ("seconds_to_target", "cpu_seconds_to_target", "steps_to_target"):
        values = [float(run[key]) for run in reached]
        out[key] = rounded_interval(mean_interval(values), 2) if values else None
        out[f"{key}_per_seed"] = [round(float(run[key]), 2) for run in runs]
    return out


def sweep_rows(dataset: str) -> dict[str, Any] | None:
    """seconds_to_target of the data set's default model in the sweep reports, where one records it."""
    if dataset not in SWEEP_ROWS:
        return None
    name, match = SWEEP_ROWS[dataset]
    with (REPO / name).open() as f:
        rows = [row for row in csv.DictReader(f) if all(row[k] == v for k, v in match.items())]
    return {"file": name, "rows": match, "seconds_to_target": [float(row["seconds_to_target"]) for row in rows],
            "note": "history every train.eval_every = 1000 steps; trials ran side by side on the 2 cores"}  # fmt: skip


def time_to_quality(size: Size, train: bool = False, seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, object]:
    """Seconds (wall and CPU) and steps to each data set's target over training seeds: read from
    results/time_to_quality.json, or trained now with `train` (every size: a smaller one would miss the target)."""
    if train:
        measured = {dataset: train_seeds(dataset, list(seeds)) for dataset in TARGET_PRESETS}
        RESULTS.write_text(json.dumps(measured, indent=1) + "\n")
    elif RESULTS.exists():
        measured = json.loads(RESULTS.read_text())
        note(f"time to quality: read {RESULTS.relative_to(REPO)} (run.py --train-ttq trains the seeds)")
    else:
        return {"time_to_quality": None, "time_to_quality_note": f"{RESULTS.name} missing: run.py --train-ttq"}
    out = {dataset: summarize(m) | {"measured_at": m.get("measured_at")} for dataset, m in measured.items()}
    for dataset in out:
        out[dataset]["sweep_report"] = sweep_rows(dataset)
    return {"time_to_quality": out, "time_to_quality_source": "trained here" if train else str(RESULTS.name)}
