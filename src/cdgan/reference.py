"""The FID reference: the domain classifier with its real-data feature statistics, which `prepare` saves and
`evaluate` scores against, and the scorer `train` measures FID with during training.

Apart from evaluation.py so that prepare and train import neither the sampler nor the metric suite: an edit
there reruns evaluate and register only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cdgan.classifier import Classifier, StackedClassifier, classifier_from_config
from cdgan.data import Dataset, mode_centres
from cdgan.files import load_torch, save_torch
from cdgan.metrics import FeatureStats, frechet_distance, mode_coverage

Scorer = Callable[[Tensor], dict[str, float]]
DomainClassifier = Classifier | StackedClassifier


@dataclass(frozen=True)
class Reference:
    """The domain classifier and the real-data feature statistics it yields (the FID reference)."""

    classifier: DomainClassifier
    mu: np.ndarray
    sigma: np.ndarray
    accuracy: float


def feature_stats(classifier: DomainClassifier, x: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    stats = FeatureStats(classifier.feature_dim)
    with torch.no_grad():
        for batch in x.split(batch_size):
            stats.update(classifier.embed(batch)[0])
    return stats.compute()


def save_reference(path: Path, classifier: DomainClassifier, real: Tensor, accuracy: float) -> Reference:
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
    classifier = classifier_from_config(saved["config"])
    classifier.load_state_dict(saved["state_dict"])
    classifier.eval()
    return Reference(classifier, saved["mu"].numpy(), saved["sigma"].numpy(), float(saved["accuracy"]))


def build_scorer(dataset: str, real: Dataset, reference_path: Path) -> Scorer:
    """samples -> metrics during training: {"fid"} (domain FID against the held-out split's statistics) for
    images, {"modes", "hq_frac", "spread"} for 2-D mixtures."""
    if not real.is_image:
        centres, std = mode_centres(dataset)
        return lambda x: mode_coverage(x.numpy(), centres, std)
    reference = load_reference(reference_path)

    def score(x: Tensor) -> dict[str, float]:
        mu, sigma = feature_stats(reference.classifier, x)
        return {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma)}

    return score
