"""The domain classifier behind FID: a small conv net trained on the real images by `prepare`.

Its penultimate layer is the feature space of cdgan's FID. Inception weights cannot be fetched
offline, so this is a *domain* FID: comparable between cdgan runs on the same data set and
classifier, not with published Inception FIDs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_DIM = 64
_HOLDOUT = 0.1  # share of the real images kept out of classifier training to measure its accuracy


class Classifier(nn.Module):
    def __init__(self, channels: int, n_classes: int, width: int = 32) -> None:
        super().__init__()
        self.channels, self.n_classes, self.width = channels, n_classes, width
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),  # side / 2
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),  # side / 4
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),  # (B, 8 * width)
            nn.Linear(8 * width, FEATURE_DIM), nn.ReLU(),  # (B, FEATURE_DIM): the FID features
        )  # fmt: skip
        self.head = nn.Linear(FEATURE_DIM, n_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, n_classes) logits
        return self.head(self.features(x))

    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "n_classes": self.n_classes, "width": self.width}


def fit_classifier(x: Tensor, y: Tensor, epochs: int, seed: int, batch_size: int = 128) -> tuple[Classifier, float]:
    """Train on all but a seeded holdout; return the network (eval mode) and its holdout accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    n_hold = max(1, int(_HOLDOUT * len(x)))
    hold, fit = order[:n_hold], order[n_hold:]
    net = Classifier(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in fit[torch.randperm(len(fit), generator=gen)].split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x[hold]).argmax(1) == y[hold]).float().mean().item()
    return net, accuracy
