"""The domain classifier behind the feature-space metrics.

A small conv net that `prepare` trains on the real images; its penultimate layer gives a *domain* FID,
comparable between cdgan runs on the same data set and classifier, not with published FIDs (those need the
FID Inception-v3 of cdgan.inception).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdgan.params import PIXEL_RANGE

FEATURE_DIM = 64

DEEP_SIDE = 16  # images this size and up get the deeper network and its training recipe


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()]


class Classifier(nn.Module):
    """The domain classifier: a small conv net for images under DEEP_SIDE (the 8x8 digits), and for larger ones
    (MNIST at 28x28) two VGG-style blocks of batch-normed convolutions with max pooling: counting the modes of
    stacked MNIST needs a digit classifier that is nearly always right, as an error in any channel moves a stack
    to another mode (tests/test_classifier.py holds it to its accuracy bound)."""

    def __init__(self, channels: int, n_classes: int, width: int = 32, side: int = 8) -> None:
        super().__init__()
        self.channels, self.n_classes, self.width, self.side = channels, n_classes, width, side
        if side < DEEP_SIDE:
            body = [
                nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),  # side / 2
                nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),  # side / 4
            ]  # fmt: skip
        else:
            body = [
                *_conv_bn(channels, width), *_conv_bn(width, width), nn.MaxPool2d(2),  # side / 2
                *_conv_bn(width, 2 * width), *_conv_bn(2 * width, 2 * width), nn.MaxPool2d(2),  # side / 4
            ]  # fmt: skip
        self.features = nn.Sequential(
            *body,
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (B, 8 * width)
            nn.Linear(8 * width, FEATURE_DIM), nn.ReLU(),  # (B, FEATURE_DIM): the FID features
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, n_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, n_classes) logits
        return self.head(self.features(x))

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) in [-1, 1] -> (B, FEATURE_DIM) features and (B, n_classes) logits, in one pass."""
        features = self.features(x)
        return features, self.head(features)

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "n_classes": self.n_classes, "width": self.width, "side": self.side}


class StackedClassifier(nn.Module):
    """A one-channel digit classifier applied to each channel of a stacked image (stacked MNIST protocol).

    Features are the per-channel features side by side; the class is the tuple of per-channel digits,
    e.g. 3 channels of 10 digits give 1000 classes, with log p(a, b, c) = log p(a) + log p(b) + log p(c).
    """

    def __init__(self, digit: Classifier, stacked: int) -> None:
        super().__init__()
        self.digit, self.stacked = digit, stacked
        self.n_classes = digit.n_classes**stacked

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM * self.stacked

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape  # (B, stacked, H, W)
        features, logits = self.digit.embed(x.reshape(b * c, 1, h, w))
        log_p = F.log_softmax(logits, 1).reshape(b, c, -1)  # (B, stacked, n_digits)
        joint = log_p[:, 0]
        for channel in range(1, c):  # outer sum: (B, n^k) joint log-probabilities, first channel most significant
            joint = (joint[:, :, None] + log_p[:, channel][:, None, :]).reshape(b, -1)
        return features.reshape(b, -1), joint

    def forward(self, x: Tensor) -> Tensor:
        return self.embed(x)[1]

    def config(self) -> dict[str, int]:
        return self.digit.config() | {"stacked": self.stacked}


def classifier_from_config(config: dict[str, int]) -> Classifier | StackedClassifier:
    config = dict(config)
    stacked = config.pop("stacked", 0)
    digit = Classifier(**config)
    return StackedClassifier(digit, stacked) if stacked else digit


def _shifted(x: Tensor, gen: torch.Generator, max_shift: int) -> Tensor:
    """The batch x (B, C, H, W) moved by up to max_shift pixels each way, background filling the margin."""
    padded = F.pad(x, (max_shift,) * 4, value=PIXEL_RANGE[0])
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def fit_classifier(x: Tensor, y: Tensor, epochs: int, seed: int, batch_size: int = 128) -> Classifier:
    """Train on all of (x, y), the training split; the network comes back in eval mode.

    Images under DEEP_SIDE: Adam at a constant 1e-3. Larger ones: the deeper network, batches shifted by up to
    2 pixels (digits are not centred to the pixel) and a one-cycle learning rate: with 8,000 training digits the
    plain recipe stays well below the mode-counting bound at the same epochs (reports/mnist_classifier.md).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    side = x.shape[-1]
    net = Classifier(x.shape[1], int(y.max()) + 1, side=side)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    is_deep = side >= DEEP_SIDE
    n_batches = epochs * math.ceil(len(x) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=n_batches) if is_deep else None
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            x_batch = _shifted(x[batch], gen, 2) if is_deep else x[batch]
            F.cross_entropy(net(x_batch), y[batch]).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    return net.eval()


def classifier_accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Share of (x, y), the held-out split, that `net` classifies right."""
    with torch.no_grad():
        batches = zip(x.split(batch_size), y.split(batch_size), strict=True)
        hits = sum(int((net(xb).argmax(1) == yb).sum()) for xb, yb in batches)
    return hits / len(y)
