"""Tests for cdgan.classifier: the domain classifier behind FID learns digits and exposes FEATURE_DIM features."""

from __future__ import annotations

import pytest
import torch

from cdgan.classifier import FEATURE_DIM, Classifier, fit_classifier
from cdgan.data import build_dataset
from cdgan.params import DataParams


@pytest.fixture(scope="module")
def trained() -> tuple[Classifier, float, torch.Tensor]:
    digits = build_dataset(DataParams(dataset="digits"))
    x, y = torch.from_numpy(digits.x), torch.from_numpy(digits.y)
    net, accuracy = fit_classifier(x, y, epochs=2, seed=0)
    return net, accuracy, x


def test_fit_classifier_learns_digits(trained: tuple[Classifier, float, torch.Tensor]) -> None:
    # given two epochs on the embedded digits; chance is 0.1
    net, accuracy, _ = trained
    # then
    assert 0.5 < accuracy <= 1.0, f"holdout accuracy {accuracy}"
    assert not net.training, "the classifier should come back in eval mode"
    assert net.config() == {"channels": 1, "n_classes": 10, "width": 32}


def test_features_have_feature_dim_columns(trained: tuple[Classifier, float, torch.Tensor]) -> None:
    net, _, x = trained
    with torch.no_grad():
        features, logits = net.features(x[:20]), net(x[:20])
    assert features.shape == (20, FEATURE_DIM)
    assert logits.shape == (20, 10)
    assert features.std(0).gt(0).any(), "features are constant: nothing for FID to compare"


def test_fit_classifier_is_seeded() -> None:
    # given a tiny slice, so two fits stay fast
    digits = build_dataset(DataParams(dataset="digits"))
    x, y = torch.from_numpy(digits.x[:100]), torch.from_numpy(digits.y[:100])
    # when
    a, acc_a = fit_classifier(x, y, epochs=1, seed=3)
    b, acc_b = fit_classifier(x, y, epochs=1, seed=3)
    # then
    assert acc_a == acc_b
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_classifier_handles_three_channels_and_16_pixels() -> None:
    net = Classifier(channels=3, n_classes=1000)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert net.features(x).shape == (4, FEATURE_DIM) and net(x).shape == (4, 1000)
