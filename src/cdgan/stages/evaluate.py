"""The evaluate stage: the trained networks scored against the held-out data, beside their reference points,
into metrics/eval.json, plots/eval/samples.png and the training's MLflow run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from cdgan import tracking
from cdgan.data import load_dataset, mode_centres
from cdgan.devices import resolve_device
from cdgan.evaluation import build_suite, reference_points, score_model
from cdgan.files import read_json, sha256_file, write_json
from cdgan.models import EnergyNet, Generator
from cdgan.params import EvaluateParams, Params, Paths, SampleParams
from cdgan.pictures import save_samples_png
from cdgan.stages.edge import run_stage
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


def score(params: Params, paths: Paths, networks: Callable[[tuple[int, ...]], Networks]) -> Scores:
    """Score the sampler `networks(data_shape)` returns on the prepared data, as `evaluate` does; the params
    are checked against the data before it is called."""
    train_split, heldout = load_dataset(paths.dataset), load_dataset(paths.heldout)
    ev = params.evaluate
    device = resolve_device(ev.device, "evaluate.device")
    suite = build_suite(params.data.dataset, heldout, paths.classifier, ev, device)  # checks params against the data
    generator, energy, sampling = networks(train_split.shape)
    evaluation = score_model(suite, generator.to(device), energy.to(device), sampling)
    metrics = evaluation.metrics | reference_points(suite, train_split, heldout)
    info = {"dataset": params.data.dataset, "feature_extractor": suite.feature_extractor, "n_samples": ev.n_samples,
            "seed": ev.seed, "sample_space": sampling.space}  # fmt: skip
    return Scores(metrics, info | scale_hashes(suite.feature_extractor, ev, paths), evaluation.preview)


def scale_hashes(feature_extractor: str, ev: EvaluateParams, paths: Paths) -> dict[str, str]:
    """The sha256 of each file that sets the scale of the figures, for the champion gate (registry.SCALE_KEYS).

    `data_sha256`: the training split, which the floors and the mixture baseline are drawn from.
    `reference_sha256`: the held-out split, the real side of every image metric. `features_sha256`: the feature
    network, the domain classifier's file (its weights and the held-out statistics `prepare` took with it) or
    Inception's weights file. 2-D mixtures are scored against fresh draws of the true mixture, with no network:
    both "none".
    """
    hashes = {"data_sha256": sha256_file(paths.dataset)}
    if feature_extractor == "none":
        return hashes | {"reference_sha256": "none", "features_sha256": "none"}
    network = paths.classifier if feature_extractor == "domain" else Path(ev.inception_weights)  # as build_suite
    return hashes | {"reference_sha256": sha256_file(paths.heldout), "features_sha256": sha256_file(network)}


def evaluate(params: Params, paths: Paths) -> EvaluateResult:
    """Score models/ into metrics/eval.json, plots/eval/ and its MLflow run."""
    run_id = read_json(paths.train_metrics)["mlflow_run_id"]
    scores = score(params, paths, lambda shape: (*load_trained(params, paths, shape), params.sample))
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
