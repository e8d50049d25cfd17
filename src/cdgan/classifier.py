"""The networks behind the feature-space metrics: the domain classifier and the FID Inception-v3.

The domain classifier is a small conv net that `prepare` trains on the real images; its penultimate
layer gives a *domain* FID, comparable between cdgan runs on the same data set and classifier, not
with published FIDs. Those need the Inception-v3 of the TensorFlow FID code, whose weights cdgan
never downloads: `load_fid_inception` reads pytorch-fid's weights file from a local path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from cdgan.errors import CdganError
from cdgan.files import load_torch
from cdgan.params import PIXEL_RANGE

FEATURE_DIM = 64
INCEPTION_DIM = 2048  # pool3 features, the FID standard
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


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


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean; torchvision's counts it
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool(x: Tensor) -> Tensor:
    # the FID graph's last block max-pools here (the paper and torchvision average-pool)
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


Pool = Callable[[Tensor], Tensor]


class _FidInceptionA(InceptionA):
    """torchvision's block with the pooling of the TensorFlow FID graph (as pytorch-fid patches it)."""

    def __init__(self, in_channels: int, pool_features: int, pool: Pool = _tf_avg_pool) -> None:
        super().__init__(in_channels, pool_features)
        self.pool = pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(self.pool(x))]


class _FidInceptionC(InceptionC):
    def __init__(self, in_channels: int, channels_7x7: int, pool: Pool = _tf_avg_pool) -> None:
        super().__init__(in_channels, channels_7x7)
        self.pool = pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for conv in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = conv(branch7x7dbl)
        return [self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(self.pool(x))]


class _FidInceptionE(InceptionE):
    def __init__(self, in_channels: int, pool: Pool = _tf_avg_pool) -> None:
        super().__init__(in_channels)
        self.pool = pool

    def _forward(self, x: Tensor) -> list[Tensor]:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return [
            self.branch1x1(x),
            torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1),
            torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1),
            self.branch_pool(self.pool(x)),
        ]


class FidInceptionV3(Inception3):
    """Inception-v3 of the TensorFlow FID code, as pytorch-fid ports it: same module names, so pytorch-fid's
    weights file loads as it is. `embed` gives pool3 features (2048) and the 1008 ImageNet logits."""

    def __init__(self) -> None:
        super().__init__(num_classes=1008, aux_logits=False, init_weights=False)
        self.Mixed_5b = _FidInceptionA(192, pool_features=32)
        self.Mixed_5c = _FidInceptionA(256, pool_features=64)
        self.Mixed_5d = _FidInceptionA(288, pool_features=64)
        self.Mixed_6b = _FidInceptionC(768, channels_7x7=128)
        self.Mixed_6c = _FidInceptionC(768, channels_7x7=160)
        self.Mixed_6d = _FidInceptionC(768, channels_7x7=160)
        self.Mixed_6e = _FidInceptionC(768, channels_7x7=192)
        self.Mixed_7b = _FidInceptionE(1280)
        self.Mixed_7c = _FidInceptionE(2048, pool=_max_pool)

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 1 or 3, H, W) in [-1, 1] -> (B, 2048) pool3 features and (B, 1008) logits.

        Resized to 299 x 299 bilinearly as pytorch-fid does; grey images repeat to three channels.
        The inputs are already in [-1, 1], the range the weights expect, so no rescaling.
        """
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)  # (B, 3, 299, 299)
        for block in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
                      self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2,
                      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
            x = block(x)
        features = torch.flatten(self.avgpool(x), 1)  # (B, 2048)
        # logits without the bias, as the original Inception Score code reads them (and torchmetrics' default)
        return features, features @ self.fc.weight.T


def load_fid_inception(path: Path) -> FidInceptionV3:
    """The FID Inception from pytorch-fid's weights file at `path` (eval mode); never downloads it."""
    if not path.is_file():
        raise CdganError(
            f"evaluate.inception_weights={path}: file not found. cdgan never downloads it: fetch {INCEPTION_URL} "
            "on a machine with network, copy it to that path (or point evaluate.inception_weights at it), "
            "or use evaluate.feature_extractor: domain"
        )
    net = FidInceptionV3()
    try:
        net.load_state_dict(load_torch(path, "FID Inception weights file"))
    except RuntimeError as err:  # missing, unexpected or mis-shaped keys
        raise CdganError(
            f"evaluate.inception_weights={path}: not pytorch-fid's FID Inception weights ({str(err)[:200]}); "
            f"get {INCEPTION_URL}"
        ) from None
    return net.eval()
