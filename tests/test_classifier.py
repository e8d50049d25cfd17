"""Tests for cdgan.classifier: the domain classifier learns digits and exposes FEATURE_DIM features; the FID
Inception-v3 is wired as pytorch-fid's, loads a local weights file and never downloads one."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_fid.inception import InceptionV3 as PytorchFidInception
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from cdgan.classifier import FEATURE_DIM, Classifier, classifier_accuracy, classifier_from_config, fit_classifier
from cdgan.data import build_dataset, build_splits
from cdgan.errors import CdganError
from cdgan.inception import INCEPTION_DIM, INCEPTION_URL, FidInceptionV3, load_fid_inception
from cdgan.params import DataParams, EvaluateParams


@pytest.fixture(scope="module")
def trained() -> tuple[Classifier, float, torch.Tensor]:
    splits = build_splits(DataParams(dataset="digits"))
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y)
    net = fit_classifier(x, y, epochs=2, seed=0)
    accuracy = classifier_accuracy(net, torch.from_numpy(splits.heldout.x), torch.from_numpy(splits.heldout.y))
    return net, accuracy, x


def test_fit_classifier_learns_digits(trained: tuple[Classifier, float, torch.Tensor]) -> None:
    # given two epochs on the embedded digits; chance is 0.1
    net, accuracy, _ = trained
    # then
    assert 0.5 < accuracy <= 1.0, f"held-out accuracy {accuracy}"
    assert not net.training, "the classifier should come back in eval mode"
    assert net.config() == {"channels": 1, "n_classes": 10, "width": 32, "side": 8}


def test_images_from_16_px_get_the_deeper_classifier_and_old_configs_load_the_small_one() -> None:
    # given the two sizes, and a config saved before the side was recorded
    small, deep = Classifier(1, 10, side=8), Classifier(1, 10, side=28)
    from_old = classifier_from_config({"channels": 1, "n_classes": 10, "width": 32})
    # then 28x28 MNIST gets batch-normed blocks with pooling, the 8x8 digits and old files the small net, and both
    # give FEATURE_DIM features; a deep classifier rebuilt from its config takes its own weights
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in deep.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in small.modules())
    assert [type(m) for m in from_old.modules()] == [type(m) for m in small.modules()]
    with torch.no_grad():
        assert deep.eval().features(torch.zeros(2, 1, 28, 28)).shape == (2, FEATURE_DIM)
    rebuilt = classifier_from_config(deep.config())
    rebuilt.load_state_dict(deep.state_dict())
    assert rebuilt.side == 28


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
    a = fit_classifier(x, y, epochs=1, seed=3)
    b = fit_classifier(x, y, epochs=1, seed=3)
    # then
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_classifier_accuracy_counts_right_answers() -> None:
    # given a "network" whose logits are its input: it predicts the column holding the largest value
    x = torch.eye(4)[[0, 1, 2, 3, 0]]  # predicts 0, 1, 2, 3, 0
    y = torch.tensor([0, 1, 0, 3, 1])
    # when, in batches that do not divide the rows
    accuracy = classifier_accuracy(torch.nn.Identity(), x, y, batch_size=2)
    # then 3 of 5 are right
    assert accuracy == pytest.approx(3 / 5)


def test_classifier_handles_three_channels_and_16_pixels() -> None:
    net = Classifier(channels=3, n_classes=1000)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    assert net.features(x).shape == (4, FEATURE_DIM) and net(x).shape == (4, 1000)


def test_embed_gives_the_features_and_the_logits_of_forward(trained: tuple[Classifier, float, torch.Tensor]) -> None:
    net, _, x = trained
    with torch.no_grad():
        features, logits = net.embed(x[:8])
        assert torch.equal(features, net.features(x[:8])) and torch.equal(logits, net(x[:8]))


# --- FID Inception-v3 -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fid_inception() -> FidInceptionV3:
    return FidInceptionV3().eval()


def _torchvision_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # counts the zero padding


@pytest.mark.parametrize(
    ("name", "torchvision_block"),
    [
        ("Mixed_5b", lambda: InceptionA(192, pool_features=32)),
        ("Mixed_6b", lambda: InceptionC(768, channels_7x7=128)),
        ("Mixed_7b", lambda: InceptionE(1280)),
    ],
)
def test_fid_blocks_are_torchvision_blocks_but_for_the_pooling(
    fid_inception: FidInceptionV3, name: str, torchvision_block: Callable[[], torch.nn.Module]
) -> None:
    # given the same weights, and torchvision's pooling swapped into a copy of the FID block:
    # every branch must then be wired as torchvision's
    block, reference = copy.deepcopy(getattr(fid_inception, name)), torchvision_block()
    reference.load_state_dict(block.state_dict())
    block.pool = _torchvision_pool
    x = torch.randn(2, block.branch1x1.conv.in_channels, 5, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), reference.eval()(x), atol=1e-5)


def test_fid_blocks_pool_as_the_tensorflow_graph(fid_inception: FidInceptionV3) -> None:
    # given a constant image: TensorFlow's average pool keeps it constant (torchvision's darkens the border)
    ones = torch.ones(1, 1, 4, 4)
    assert _torchvision_pool(ones)[0, 0, 0, 0] == pytest.approx(4 / 9)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7b"):
        assert torch.equal(getattr(fid_inception, name).pool(ones), ones), name
    # and the last block max-pools, as the FID graph does
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(fid_inception.Mixed_7c.pool(x), F.max_pool2d(x, kernel_size=3, stride=1, padding=1))


def test_fid_inception_has_the_module_names_pytorch_fid_loads_its_weights_into(fid_inception: FidInceptionV3) -> None:
    # pytorch-fid loads its weights file into torchvision's Inception3(num_classes=1008, aux_logits=False)
    reference = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    shapes = {key: value.shape for key, value in fid_inception.state_dict().items()}
    assert shapes == {key: value.shape for key, value in reference.state_dict().items()}


def _pytorch_fid_pool3(weights: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """pytorch-fid's own network on `weights`: it gets its weights through torch.hub's cache, which reads a
    file already there instead of fetching it."""
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / INCEPTION_URL.rsplit("/", 1)[1]).symlink_to(weights.resolve())
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return PytorchFidInception([PytorchFidInception.BLOCK_INDEX_BY_DIM[INCEPTION_DIM]]).eval()


def _assert_features_agree_with_pytorch_fid(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = load_fid_inception(weights), _pytorch_fid_pool3(weights, tmp_path / "torch", monkeypatch)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # pytorch-fid's range [0, 1]
    with torch.no_grad():
        features, _ = ours.embed(images * 2 - 1)  # cdgan's range [-1, 1]
        reference = theirs(images)[0].flatten(1)
    assert features.abs().max() > 0, "features must not all be zero, or the comparison says nothing"
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


def test_fid_features_agree_with_pytorch_fid_on_the_same_weights(
    fid_inception: FidInceptionV3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given pytorch-fid's network and cdgan's holding the same (random) weights: the real file cannot be
    # fetched here, but the same weights through both networks test every layer, pool and resize between them
    weights = tmp_path / "random_inception.pth"
    torch.save(fid_inception.state_dict(), weights)
    _assert_features_agree_with_pytorch_fid(weights, tmp_path, monkeypatch)


def test_fid_features_agree_with_pytorch_fid_on_the_real_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = Path(EvaluateParams().inception_weights)  # params.yaml's default path, relative to the project
    if not weights.is_file():
        pytest.skip(f"{weights} not present (cdgan never downloads it); fetch {INCEPTION_URL} to run this test")
    _assert_features_agree_with_pytorch_fid(weights, tmp_path, monkeypatch)


def test_load_fid_inception_reads_a_local_weights_file_and_embeds_grey_images(
    fid_inception: FidInceptionV3, tmp_path: Path
) -> None:
    # given a weights file with the right keys (random values: the real file cannot be fetched offline)
    path = tmp_path / "pt_inception.pth"
    torch.save(fid_inception.state_dict(), path)
    # when
    net = load_fid_inception(path)
    with torch.no_grad():
        features, logits = net.embed(torch.rand(2, 1, 8, 8) * 2 - 1)  # grey 8 x 8: repeated to RGB, resized to 299
    # then
    assert not net.training
    assert features.shape == (2, INCEPTION_DIM) and logits.shape == (2, 1008)
    assert torch.isfinite(features).all() and (features >= 0).all(), "pool3 features follow a ReLU"


def test_missing_inception_weights_name_the_param_and_the_file_and_download_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inception" / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(CdganError) as err:
        load_fid_inception(path)
    message = str(err.value)
    assert f"evaluate.inception_weights={path}" in message and INCEPTION_URL in message, message
    assert "never downloads" in message and "feature_extractor: domain" in message, message
    assert not path.parent.exists(), "nothing fetched or created"


def test_a_weights_file_of_another_network_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pth"
    torch.save(Classifier(channels=1, n_classes=10).state_dict(), path)
    with pytest.raises(CdganError, match="not pytorch-fid's FID Inception weights"):
        load_fid_inception(path)


def test_stacked_classifier_classes_are_the_per_channel_digits() -> None:
    from cdgan.classifier import StackedClassifier

    # given a digit classifier and images whose three channels are three digit images
    digit = Classifier(1, 10, width=4).eval()
    stacked = StackedClassifier(digit, 3).eval()
    x = torch.rand(5, 3, 8, 8) * 2 - 1
    # when both classify
    features, joint = stacked.embed(x)
    per_channel = torch.stack([digit(x[:, c : c + 1]).argmax(1) for c in range(3)], 1)  # (5, 3)
    # then the joint class is 100 a + 10 b + c, probabilities sum to 1, features sit side by side
    assert joint.shape == (5, 1000) and features.shape == (5, 3 * stacked.digit.feature_dim)
    assert torch.equal(joint.argmax(1), per_channel[:, 0] * 100 + per_channel[:, 1] * 10 + per_channel[:, 2])
    torch.testing.assert_close(joint.exp().sum(1), torch.ones(5))
    rebuilt = classifier_from_config(stacked.config())
    assert isinstance(rebuilt, StackedClassifier) and rebuilt.n_classes == 1000
