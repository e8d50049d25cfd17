"""The reference stage: the reference points every evaluation is read beside (real data scored as the model output
is, and the Gaussian-mixture baseline at its best setting), into metrics/reference.json.

They depend on the prepared data and the evaluate settings, never on the model, so a stage of their own scores
them once per prepared data set: retraining reruns evaluate only, and DVC's run cache restores them for every
sweep trial and queued experiment that shares the data (on stacked MNIST the mixture grid takes minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdgan.data import Dataset, load_dataset
from cdgan.devices import resolve_device
from cdgan.errors import CdganError
from cdgan.evaluation import Suite, build_suite, reference_points
from cdgan.files import read_json, sha256_file, write_json
from cdgan.params import EvaluateParams, Params, Paths
from cdgan.stages.edge import run_stage


@dataclass(frozen=True)
class ReferenceResult:
    points: dict[str, float]
    metrics_json: Path

    def summary(self) -> str:
        return " ".join(f"{k}={v:.4g}" for k, v in self.points.items()) + f"; in {self.metrics_json}"


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


def scored_on(params: Params, paths: Paths) -> dict[str, Any]:
    """What reference points hold for: the files that set their scale and every evaluate setting they read."""
    ev = params.evaluate
    extractor = ev.feature_extractor if params.data.is_image else "none"
    settings = ev.model_dump(exclude={"device", "nearest_k"})  # neither changes a reference point
    return {"dataset": params.data.dataset} | scale_hashes(extractor, ev, paths) | settings


def load_suite(params: Params, paths: Paths) -> tuple[Suite, Dataset]:
    """The metric suite of params.evaluate on the prepared held-out split (which checks the params against the
    data), and that split."""
    heldout = load_dataset(paths.heldout)
    device = resolve_device(params.evaluate.device, "evaluate.device")
    return build_suite(params.data.dataset, heldout, paths.classifier, params.evaluate, device), heldout


def reference(params: Params, paths: Paths) -> ReferenceResult:
    """Score the reference points into metrics/reference.json, with what they were scored on."""
    train_split = load_dataset(paths.dataset)
    suite, heldout = load_suite(params, paths)
    points = reference_points(suite, train_split, heldout)
    write_json(paths.reference_metrics, points | {"scored_on": scored_on(params, paths)})
    return ReferenceResult(points, paths.reference_metrics)


def read_reference(params: Params, paths: Paths) -> dict[str, float]:
    """The reference points the reference stage wrote, refused where they were scored on other data or
    settings (a stage run by hand after a params edit)."""
    if not paths.reference_metrics.is_file():
        raise CdganError(f"{paths.reference_metrics} not found: run `cdgan reference` (or `dvc repro`) first")
    saved = read_json(paths.reference_metrics)
    if saved.get("scored_on") != scored_on(params, paths):
        raise CdganError(
            f"{paths.reference_metrics} was scored on other data or evaluate settings than these params: "
            "run `cdgan reference` (or `dvc repro`) again"
        )
    return {k: v for k, v in saved.items() if k != "scored_on"}


def main(argv: list[str] | None = None) -> None:
    run_stage(reference, argv)


if __name__ == "__main__":
    main()
