"""The evaluate stage: the trained networks scored against the held-out data, beside the reference points the
reference stage scored, into metrics/eval.json, plots/eval/samples.png and the training's MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from cdgan import tracking
from cdgan.data import Dataset, mode_centres
from cdgan.devices import resolve_device
from cdgan.evaluation import Suite, score_model
from cdgan.files import read_json, write_json
from cdgan.models import EnergyNet, Generator
from cdgan.params import Params, Paths, SampleParams
from cdgan.pictures import save_samples_png
from cdgan.stages.edge import run_stage
from cdgan.stages.reference import load_suite, read_reference, scale_hashes
from cdgan.stages.trained import load_trained, loss_label

Networks = tuple[Generator, EnergyNet, SampleParams]  # a sampler: both networks and how to draw from them


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float]
    metrics_json: Path
    samples_png: Path | None  # None for --model-uri, which writes only its metrics file

    def summary(self) -> str:
        where = f"samples in {self.samples_png}" if self.samples_png else f"metrics in {self.metrics_json}"
        return " ".join(f"{k}={v:.4g}" for k, v in self.metrics.items()) + f"; {where}"


@dataclass(frozen=True)
class Scores:
    metrics: dict[str, float]  # the sampler's figures and their reference points
    info: dict[str, Any]  # what they were measured on: data set, feature extractor, sample count and seed, the
    # hashes of the files behind the figures (scale_hashes), sample space
    preview: Tensor  # samples for the picture


def score(
    params: Params,
    paths: Paths,
    networks: Callable[[tuple[int, ...]], Networks],
    reference: Callable[[Suite, Dataset], dict[str, float]],
) -> Scores:
    """Score the sampler `networks(data_shape)` returns on the prepared data, as `evaluate` does, beside the
    reference points `reference(suite, heldout)` gives; the params are checked against the data and the
    reference points taken before the sampler is called."""
    ev = params.evaluate
    suite, heldout = load_suite(params, paths)
    points = reference(suite, heldout)
    generator, energy, sampling = networks(heldout.shape)
    device = resolve_device(ev.device, "evaluate.device")
    evaluation = score_model(suite, generator.to(device), energy.to(device), sampling)
    info = {"dataset": params.data.dataset, "feature_extractor": suite.feature_extractor, "n_samples": ev.n_samples,
            "seed": ev.seed, "sample_space": sampling.space}  # fmt: skip
    hashes = scale_hashes(suite.feature_extractor, ev, paths)
    return Scores(evaluation.metrics | points, info | hashes, evaluation.preview)


def evaluate(params: Params, paths: Paths) -> EvaluateResult:
    """Score models/ into metrics/eval.json, plots/eval/ and its MLflow run."""
    run_id = read_json(paths.train_metrics)["mlflow_run_id"]

    def networks(data_shape: tuple[int, ...]) -> Networks:
        return *load_trained(params, paths, data_shape), params.sample

    points = read_reference(params, paths)  # refused before any scoring where scored on other settings
    scores = score(params, paths, networks, lambda suite, heldout: points)
    centres = None if params.data.is_image else mode_centres(params.data.dataset)[0]
    title = f"{loss_label(params)}, {_sampling_label(params.sample)}"
    png = save_samples_png(paths.eval_plots / "samples.png", scores.preview, centres, title)
    with tracking.tracked_run(params, paths, run_id):
        tracking.log_metrics(None, scores.metrics)
        tracking.log_artifact(png, "samples")
    write_json(paths.eval_metrics, scores.metrics | scores.info | {"mlflow_run_id": run_id})
    return EvaluateResult(scores.metrics, paths.eval_metrics, png)


def _sampling_label(sampling: SampleParams) -> str:
    if sampling.langevin_steps == 0:
        return "raw G(z)"
    return f"{sampling.langevin_steps} Langevin steps in {sampling.space} space at T={sampling.temperature:g}"


def main(argv: list[str] | None = None) -> None:
    run_stage(evaluate, argv)


if __name__ == "__main__":
    main()
