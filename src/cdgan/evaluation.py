"""Scoring samples against the real data: feature-space metrics for images, mode coverage for 2-D mixtures.

Image metrics (`evaluate.metrics`): fid (and fid_raw for raw G(z)), kid, precision_recall,
density_coverage, inception_score, all in the space of one feature extractor (`evaluate.feature_extractor`).
`inception_score` uses that extractor's class probabilities: with `domain`, the domain classifier's
(at most its number of classes, not comparable with published Inception Scores).
Samples are drawn, featurized and folded into running statistics BATCH at a time, so FID and the
Inception Score take memory independent of `evaluate.n_samples`; KID and the k-NN metrics need every
feature at once, (n_samples, d) floats, which they keep only when asked for.
2-D mixtures always report modes, hq_frac, spread and mmd (and their _raw twins) and ignore
`evaluate.metrics`, as a loss ignores the params of the others: switching data.dataset needs no second edit.

Every figure is scored against held-out data (`prepare`'s held-out split, or fresh draws of a known
2-D mixture), and `reference_points` puts reference points beside it: `<metric>_floor` (real training
data scored the same way: what a perfect sampler gets at this sample count) and, for images, `fid_gmm`
(a Gaussian mixture fitted to the training pixels, in their first GMM_PCA_DIMS principal components where
there are more pixels than that, at its best number of components).

Which of these figures ranks models is `cdgan.ranking`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from cdgan.data import Dataset, draw_mixture, mode_centres
from cdgan.errors import CdganError
from cdgan.metrics import (
    FeatureStats,
    InceptionScore,
    density_coverage,
    frechet_distance,
    kernel_inception_distance,
    kid_scaled,
    mixture_mmd,
    mode_coverage,
    precision_recall,
)
from cdgan.models import EnergyNet, Generator
from cdgan.params import PIXEL_RANGE, EvaluateParams, SampleParams
from cdgan.reference import Reference, load_reference
from cdgan.sampler import draw_samples

if TYPE_CHECKING:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

BATCH = 500  # samples drawn, featurized and accumulated at a time; fixed, as each batch has its own seed
PREVIEW = 2500  # model samples kept for the picture
_FEATURE_BATCH = 100  # images per feature-network call: Inception's activations at 299 px are ~10 MB an image
_REAL_FEATURE_METRICS = ("kid", "precision_recall", "density_coverage")
GMM_COMPONENTS = (1, 5, 10, 20, 40)  # the baseline's grid: it gets its best FID over these
GMM_FIT_ROWS = 5000  # training images the mixture is fitted to, at most (full covariances: O(rows * k * q^2))
# The mixture's q dimensions: the d pixels where d <= GMM_PCA_DIMS (8x8 digits and stacked digits keep their
# pixel-space fit), else the first GMM_PCA_DIMS principal components, so the covariances take O(k * q^2), not
# O(k * d^2). Full covariances: PCA decorrelates the data as a whole, not within a component. A fixed q, not a
# share of variance: that share needs more dims as images grow, and the cost would grow with them; a larger q
# lowers the baseline's FID on 32x32 images, so q is as large as keeps the fit a small part of the evaluation.
GMM_PCA_DIMS = 256
GMM_SELECT_SAMPLES = 2000  # the grid is compared on this many samples at most, the winner scored on n_samples


@dataclass(frozen=True)
class FeatureExtractor:
    """One interface over the feature networks (the domain classifier, the FID Inception-v3).

    `network.embed`: (B, C, H, W) in [-1, 1] -> (B, dim) features and (B, n_classes) logits.
    `name` is the `evaluate.feature_extractor` value, recorded in metrics/eval.json and the registry tags.
    """

    name: str
    dim: int
    n_classes: int
    network: nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, C, H, W) on any device
        with torch.no_grad():
            parts = [self.network.embed(chunk.to(self.device)) for chunk in x.split(_FEATURE_BATCH)]
        return torch.cat([f for f, _ in parts]), torch.cat([logits for _, logits in parts])


def build_extractor(ev: EvaluateParams, reference: Reference, device: torch.device) -> FeatureExtractor:
    """The extractor `evaluate.feature_extractor` names; CdganError when Inception's weights file is missing."""
    if ev.feature_extractor == "domain":
        classifier = reference.classifier
        return FeatureExtractor("domain", classifier.feature_dim, classifier.n_classes, classifier.to(device))
    from cdgan.inception import INCEPTION_DIM, load_fid_inception  # torchvision's import: only where it is used

    return FeatureExtractor("inception", INCEPTION_DIM, 1008, load_fid_inception(Path(ev.inception_weights)).to(device))


@dataclass(frozen=True)
class Suite:
    """What samples are scored against, built and checked before any sample is drawn.

    Images: the extractor, the held-out split's feature statistics (the FID reference) and, for KID and
    the k-NN metrics, the features of min(n_samples, N) seeded held-out examples. 2-D mixtures: mode
    centres and std, and n_samples fresh draws of the true mixture.
    """

    ev: EvaluateParams
    extractor: FeatureExtractor | None = None
    real_stats: tuple[np.ndarray, np.ndarray] | None = None
    real_features: Tensor | None = None  # (n_real, d), on the extractor's device
    classifier_accuracy: float | None = None
    modes: tuple[np.ndarray, float] | None = None
    truth: np.ndarray | None = None  # (n_samples, 2) fresh draws of the true 2-D mixture
    truth_twin: np.ndarray | None = None  # as many more, independent: the floor a perfect sampler reaches

    @property
    def feature_extractor(self) -> str:
        return self.extractor.name if self.extractor is not None else "none"


def build_suite(dataset: str, real: Dataset, reference_path: Path, ev: EvaluateParams, device: torch.device) -> Suite:
    """`real` is the held-out split (images); 2-D mixtures are scored against fresh draws of the true mixture."""
    if not real.is_image:
        truth, twin = (_fresh_mixture(dataset, ev, stream) for stream in (1, 2))
        return Suite(ev, modes=mode_centres(dataset), truth=truth, truth_twin=twin)
    n_real = min(len(real.x), ev.n_samples)
    if "kid" in ev.metrics and ev.kid_subset_size > n_real:
        raise CdganError(
            f"evaluate.kid_subset_size={ev.kid_subset_size} exceeds the {n_real} samples per side "
            f"(the smaller of evaluate.n_samples and the {len(real.x)} real examples); lower it"
        )
    is_knn = {"precision_recall", "density_coverage"} & set(ev.metrics)
    if is_knn and ev.nearest_k >= n_real:
        raise CdganError(f"evaluate.nearest_k={ev.nearest_k} must be below the {n_real} samples per side; lower it")
    reference = load_reference(reference_path)
    extractor = build_extractor(ev, reference, device)
    is_kept = None
    if set(_REAL_FEATURE_METRICS) & set(ev.metrics):
        order = torch.randperm(len(real.x), generator=torch.Generator().manual_seed(ev.seed))
        is_kept = np.zeros(len(real.x), dtype=bool)
        is_kept[order[:n_real].numpy()] = True
    if extractor.name == "domain":  # statistics cached by `prepare`: a pass only for the kept features
        stats = (reference.mu, reference.sigma)
        features = _featurize_real(extractor, real.x, is_kept)[1] if is_kept is not None else None
    else:
        real_scores, features = _featurize_real(extractor, real.x, is_kept)
        stats = real_scores.stats.compute()
    return Suite(ev, extractor, stats, features, reference.accuracy)


class _ImageScores:
    """Images folded in a batch at a time: the running statistics of their features (fid), the classes the
    extractor predicts for them (modes, kl) and the features of the first `keep` images (kid, the k-NN metrics).
    Shaped as a torchmetrics metric: `update` per batch, then compute."""

    def __init__(self, extractor: FeatureExtractor, keep: int = 0) -> None:
        self.extractor = extractor
        self.stats = FeatureStats(extractor.dim).to(extractor.device)
        self.labels: list[Tensor] = []
        self.keep = keep
        self.kept: list[Tensor] = []

    def update(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Fold in images x (B, C, H, W); returns their features (B, dim) and logits (B, n_classes)."""
        features, logits = self.extractor(x)
        self.stats.update(features)
        self.labels.append(logits.argmax(1))
        n_kept = sum(map(len, self.kept))
        if n_kept < self.keep:
            self.kept.append(features[: self.keep - n_kept])
        return features, logits

    def kept_features(self) -> Tensor | None:
        return torch.cat(self.kept) if self.kept else None

    def fid(self, real_stats: tuple[np.ndarray, np.ndarray]) -> float:
        return frechet_distance(*self.stats.compute(), *real_stats)

    def class_coverage(self) -> dict[str, float]:
        return class_coverage(torch.cat(self.labels).cpu(), self.extractor.n_classes)


def _batch_rows(n: int) -> Iterator[slice]:
    """The rows of an array of n images, BATCH at a time."""
    return (slice(start, start + BATCH) for start in range(0, n, BATCH))


def _featurize_real(
    extractor: FeatureExtractor, x: np.ndarray, is_kept: np.ndarray | None
) -> tuple[_ImageScores, Tensor | None]:
    """One pass over the real images: all folded into scores, and the features of the rows `is_kept` marks."""
    scores, kept = _ImageScores(extractor), []
    for rows in _batch_rows(len(x)):
        features, _ = scores.update(torch.from_numpy(x[rows]))
        if is_kept is not None:
            kept.append(features[torch.from_numpy(is_kept[rows]).to(features.device)])
    return scores, torch.cat(kept) if is_kept is not None else None


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    preview: Tensor  # the first PREVIEW samples of the model output, for the picture


def sample_batches(
    generator: Generator, energy: EnergyNet | None, sampling: SampleParams, n: int, seed: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(raw G(z), model output) for n samples, BATCH at a time; both start from the same z.

    Batch b draws from its own seed, SeedSequence([seed, b]), so the samples depend on (n, seed) only.
    """
    is_refined = energy is not None and sampling.langevin_steps > 0
    for b, start in enumerate(range(0, n, BATCH)):
        size, batch_seed = min(BATCH, n - start), int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
        x_raw = draw_samples(generator, energy, size, batch_seed)
        yield x_raw, draw_samples(generator, energy, size, batch_seed, sampling) if is_refined else x_raw


def class_coverage(labels: Tensor, n_classes: int) -> dict[str, float]:
    """Mode collapse in class space: classes hit (`modes`, of n_classes) and KL(class histogram || uniform)."""
    p = torch.bincount(labels, minlength=n_classes).double() / len(labels)
    nonzero = p[p > 0]
    return {"modes": float(len(nonzero)), "kl": float((nonzero * (nonzero * n_classes).log()).sum())}


def _mixture_scores(suite: Suite, x: np.ndarray) -> dict[str, float]:
    centres, std = suite.modes
    return mode_coverage(x, centres, std) | {"mmd": mixture_mmd(x, suite.truth, std)}


def score_model(suite: Suite, generator: Generator, energy: EnergyNet | None, sampling: SampleParams) -> Evaluation:
    """The metrics `suite` asks for, of the model output (G(z) refined as `sampling` says) and of raw G(z)."""
    ev = suite.ev
    batches = sample_batches(generator, energy, sampling, ev.n_samples, ev.seed)
    if suite.modes is not None:
        x_raw, x_out = (torch.cat(xs) for xs in zip(*batches, strict=True))
        raw = _mixture_scores(suite, x_raw.numpy())
        metrics = _mixture_scores(suite, x_out.numpy()) | {f"{k}_raw": v for k, v in raw.items()}
        return Evaluation(metrics, x_out[:PREVIEW])
    extractor, is_refined = suite.extractor, energy is not None and sampling.langevin_steps > 0
    scores_out, scores_raw = _ImageScores(extractor, _n_real(suite)), _ImageScores(extractor)
    inception_score = InceptionScore(extractor.n_classes).to(extractor.device)
    preview = []
    for x_raw, x_out in batches:
        _, logits = scores_out.update(x_out)
        if is_refined:
            scores_raw.update(x_raw)
        if "inception_score" in ev.metrics:
            inception_score.update(logits)
        if sum(map(len, preview)) < PREVIEW:
            preview.append(x_out)
    fid = scores_out.fid(suite.real_stats)
    metrics = {"fid": fid, "fid_raw": scores_raw.fid(suite.real_stats) if is_refined else fid}
    if "inception_score" in ev.metrics:
        metrics["inception_score"] = inception_score.compute()
    metrics |= scores_out.class_coverage()
    real, fake = suite.real_features, scores_out.kept_features()
    if "kid" in ev.metrics:
        kid, kid_std = _kid(suite, fake)
        metrics |= {"kid": kid, "kid_std": kid_std}
    if "precision_recall" in ev.metrics:
        metrics |= precision_recall(real, fake, ev.nearest_k)
    if "density_coverage" in ev.metrics:
        metrics |= density_coverage(real, fake, ev.nearest_k)
    if suite.classifier_accuracy is not None:
        metrics["classifier_accuracy"] = suite.classifier_accuracy
    return Evaluation(metrics, torch.cat(preview)[:PREVIEW])


def _n_real(suite: Suite) -> int:
    """Model samples scored by KID and the k-NN metrics: as many per side as the held-out features."""
    return 0 if suite.real_features is None else len(suite.real_features)


def _kid(suite: Suite, fake: Tensor) -> tuple[float, float]:
    """KID and its std over subsets of `fake` (n_real, d) against the held-out features: Inception's as they are
    (KID as published), the domain classifier's through `kid_scaled` by the held-out statistics."""
    ev, real = suite.ev, suite.real_features
    if suite.extractor.name == "domain":
        real, fake = kid_scaled(real, *suite.real_stats), kid_scaled(fake, *suite.real_stats)
    return kernel_inception_distance(real, fake, ev.kid_subsets, ev.kid_subset_size, ev.seed)


def _fresh_mixture(dataset: str, ev: EvaluateParams, stream: int) -> np.ndarray:
    """n_samples new draws of the true 2-D mixture, from their own seed (never the training data's)."""
    return draw_mixture(dataset, ev.n_samples, np.random.default_rng([ev.seed, stream])).x


def _scored(suite: Suite, batches: Iterable[np.ndarray], keep: int = 0) -> _ImageScores:
    """Images (B, C, H, W) in [-1, 1], given BATCH at a time, folded in as the model output is."""
    scores = _ImageScores(suite.extractor, keep)
    for x in batches:
        scores.update(torch.from_numpy(x))
    return scores


def _fid_and_classes(suite: Suite, scores: _ImageScores) -> dict[str, float]:
    """fid, modes and kl of images folded into `scores`, as the model output's are."""
    return {"fid": scores.fid(suite.real_stats)} | scores.class_coverage()


def _draws(x: np.ndarray, n: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """n rows of x drawn with replacement, BATCH at a time."""
    picks = rng.integers(len(x), size=n)
    return (x[picks[rows]] for rows in _batch_rows(n))


def reference_points(suite: Suite, train: Dataset, heldout: Dataset | None = None) -> dict[str, float]:
    """What a reader needs beside the model's figures, at the same sample count and seed.

    `<metric>_floor`: real data scored as the model output is. Images: `fid_floor` (and `kid_floor` where kid
    is asked) from n_samples training images drawn with replacement (never part of the held-out reference),
    i.e. what a sampler of the training data gets. `modes_floor` and `kl_floor` from n_samples draws of
    `heldout` where given (evaluate gives it): the classifier never saw those images, as it never sees the
    model's, so its errors weigh on the floor as on the model (on its own training images it is nearly always
    right, which would flatter the floor).
    2-D: n_samples fresh draws of the true mixture. Images also get `fid_gmm`, `modes_gmm`, `kl_gmm`:
    Gaussian mixtures with full covariances (scikit-learn) fitted to at most GMM_FIT_ROWS training images,
    in pixel space up to GMM_PCA_DIMS pixels and otherwise in the first GMM_PCA_DIMS principal components
    of those images (`gmm_dims`: the dimensions fitted in). Samples are drawn there, mapped back to pixels
    (with none of the variance outside the components), clipped to PIXEL_RANGE and scored the same way;
    each count of components in GMM_COMPONENTS is compared on min(n_samples, GMM_SELECT_SAMPLES) samples,
    and the one with the lowest FID (`gmm_components`) scored on n_samples: the naive baseline at its own
    best setting.
    """
    ev = suite.ev
    rng = np.random.default_rng([ev.seed, 2])
    if suite.modes is not None:
        return {f"{k}_floor": v for k, v in _mixture_scores(suite, suite.truth_twin).items()}
    drawn = _scored(suite, _draws(train.x, ev.n_samples, rng), _n_real(suite))
    floor = _fid_and_classes(suite, drawn)
    if "kid" in ev.metrics:
        floor["kid"] = _kid(suite, drawn.kept_features())[0]
    if heldout is not None:
        floor |= _scored(suite, _draws(heldout.x, ev.n_samples, np.random.default_rng([ev.seed, 3]))).class_coverage()
    return {f"{k}_floor": v for k, v in floor.items()} | _gmm_baseline(suite, train, rng)


def _gmm_baseline(suite: Suite, train: Dataset, rng: np.random.Generator) -> dict[str, float]:
    from sklearn.mixture import GaussianMixture

    ev = suite.ev
    pixels = train.x[rng.permutation(len(train.x))[:GMM_FIT_ROWS]]
    pixels = pixels.reshape(len(pixels), -1)  # (n, d)
    pca = _principal_components(pixels, ev.seed)
    codes = (pca.transform(pixels) if pca is not None else pixels).astype(np.float64)  # float32 fails the PSD check
    n_select = min(ev.n_samples, GMM_SELECT_SAMPLES)
    best: tuple[dict[str, float], int, GaussianMixture] | None = None
    for k in (k for k in GMM_COMPONENTS if k <= len(codes) // 10):  # >= 10 rows a component
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=ev.seed).fit(codes)
        scores = _fid_and_classes(suite, _scored(suite, _mixture_images(gmm, pca, n_select, train.shape)))
        if best is None or scores["fid"] < best[0]["fid"]:
            best = scores, k, gmm
    if best is None:
        return {}
    scores, k, gmm = best
    if n_select < ev.n_samples:
        scores = _fid_and_classes(suite, _scored(suite, _mixture_images(gmm, pca, ev.n_samples, train.shape)))
    setting = {"gmm_components": float(k), "gmm_dims": float(codes.shape[1])}
    return {f"{key}_gmm": v for key, v in scores.items()} | setting


def _principal_components(pixels: np.ndarray, seed: int) -> PCA | None:
    """The first GMM_PCA_DIMS principal components of pixels (n, d), at most n; None where d <= GMM_PCA_DIMS."""
    from sklearn.decomposition import PCA

    if pixels.shape[1] <= GMM_PCA_DIMS:
        return None
    return PCA(min(GMM_PCA_DIMS, len(pixels)), random_state=seed).fit(pixels)  # randomized SVD when q << d


def _mixture_images(gmm: GaussianMixture, pca: PCA | None, n: int, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """n images of the mixture, BATCH at a time: drawn in its space (n, q), mapped back to pixels and clipped."""
    codes = gmm.sample(n)[0]  # grouped by component, which neither FID nor class counts see
    for rows in _batch_rows(n):
        x = pca.inverse_transform(codes[rows]) if pca is not None else codes[rows]
        yield x.clip(*PIXEL_RANGE).astype(np.float32).reshape(-1, *shape)
