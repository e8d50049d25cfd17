"""`cdgan evaluate --model-uri`: a logged or registered sampler scored on the prepared data, outside the DVC
pipeline (its metrics go to a file of the user's choosing only)."""

from __future__ import annotations

from pathlib import Path

from cdgan import registry, tracking
from cdgan.data import load_dataset
from cdgan.errors import CdganError
from cdgan.evaluation import reference_points
from cdgan.files import write_json
from cdgan.params import Params, Paths
from cdgan.stages.evaluate import EvaluateResult, Networks, score


def evaluate_registered(params: Params, paths: Paths, model_uri: str, out: Path) -> EvaluateResult:
    """Score `model_uri` as the evaluate stage scores models/, beside reference points scored afresh (the
    reference stage's file may hold other settings), into the JSON file `out` only (no DVC output, no MLflow
    write)."""
    if out.resolve() == paths.eval_metrics.resolve():
        raise CdganError(f"--out {out} is the evaluate stage's DVC output; write the metrics elsewhere")

    def networks(data_shape: tuple[int, ...]) -> Networks:
        bundle = _load_registered(paths, model_uri, data_shape)
        return bundle.generator, bundle.energy, bundle.sampling

    train_split = load_dataset(paths.dataset)
    scores = score(params, paths, networks, lambda suite, heldout: reference_points(suite, train_split, heldout))
    write_json(out, scores.metrics | scores.info | {"model_uri": model_uri})
    return EvaluateResult(scores.metrics, out, None)


def _load_registered(paths: Paths, model_uri: str, data_shape: tuple[int, ...]) -> registry.Bundle:
    """A logged or registered sampler (networks and sampling settings) that fits the prepared data."""
    tracking.connect(paths)
    bundle = registry.load_sampler(model_uri)
    if tuple(bundle.generator.data_shape) != tuple(data_shape):
        raise CdganError(
            f"{model_uri} samples shape {tuple(bundle.generator.data_shape)} but {paths.dataset} holds "
            f"{tuple(data_shape)}: evaluate it in a project prepared with its data set"
        )
    return bundle
