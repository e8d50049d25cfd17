"""Scoring samples against the real data: domain FID for images, mode coverage for 2-D mixtures."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cdgan.classifier import FEATURE_DIM, Classifier
from cdgan.data import Dataset, mode_centres
from cdgan.files import load_torch, save_torch
from cdgan.metrics import FeatureStats, frechet_distance, mode_coverage

Scorer = Callable[[Tensor], dict[str, float]]
FEATURE_EXTRACTOR = "domain-classifier"  # recorded with every FID so registry gates compare like with like


@dataclass(frozen=True)
class Reference:
    """The domain classifier and the real-data feature statistics it yields (the FID reference)."""

    classifier: Classifier
    mu: np.ndarray
    sigma: np.ndarray
    accuracy: float


def feature_stats(classifier: Classifier, x: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    stats = FeatureStats(FEATURE_DIM)
    with torch.no_grad():
        for batch in x.split(batch_size):
            stats.update(classifier.features(batch))
    return stats.compute()


def save_reference(path: Path, classifier: Classifier, real: Tensor, accuracy: float) -> Reference:
    mu, sigma = feature_stats(classifier, real)
    save_torch(
        path,
        {
            "state_dict": classifier.state_dict(),
            "config": classifier.config(),
            "accuracy": accuracy,
            "mu": torch.from_numpy(mu),
            "sigma": torch.from_numpy(sigma),
        },
    )
    return Reference(classifier, mu, sigma, accuracy)


def load_reference(path: Path) -> Reference:
    saved = load_torch(path, "domain classifier")
    classifier = Classifier(**saved["config"])
    classifier.load_state_dict(saved["state_dict"])
    classifier.eval()
    return Reference(classifier, saved["mu"].numpy(), saved["sigma"].numpy(), float(saved["accuracy"]))


def build_scorer(dataset: str, real: Dataset, reference_path: Path) -> Scorer:
    """samples -> metrics: {"fid"} for image data sets, {"modes", "hq_frac"} for 2-D mixtures."""
    if len(real.shape) == 1:
        centres, std = mode_centres(dataset)
        return lambda x: mode_coverage(x.numpy(), centres, std)
    reference = load_reference(reference_path)

    def score(x: Tensor) -> dict[str, float]:
        mu, sigma = feature_stats(reference.classifier, x)
        return {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma)}

    return score


def primary_metric(is_image: bool) -> tuple[str, bool]:
    """The metric models are ranked by, and whether lower is better."""
    return ("fid", True) if is_image else ("modes", False)
