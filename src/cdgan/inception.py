"""The Inception-v3 of the TensorFlow FID code, for FIDs comparable with published ones
(`evaluate.feature_extractor: inception`).

cdgan never downloads its weights: `load_fid_inception` reads pytorch-fid's weights file from a local path. Apart
from the domain classifier because it builds on torchvision's Inception, whose import takes seconds: only the
evaluations that ask for it pay that.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from cdgan.errors import CdganError
from cdgan.files import load_torch

INCEPTION_DIM = 2048  # pool3 features, the FID standard
INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


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
