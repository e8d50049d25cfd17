"""Slow: the shipped defaults reach their quality targets on one seed per data set (`make test-slow`; CI runs them).

Each test trains the default of one data set as a user gets it (params.yaml for digits, params.yaml with a
preset of presets/ on top for the others), evaluates the model output against held-out data and checks it
against the reference points that `evaluate` writes beside it. README "Models: quality targets" has the
figures over more seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdgan.params import Params, Paths, parse_params
from cdgan.presets import read_preset
from cdgan.stages.evaluate import evaluate
from cdgan.stages.prepare import prepare
from cdgan.stages.reference import reference
from cdgan.stages.train import train
from tests.conftest import REPO


def _run(raw: dict, root: Path) -> dict[str, float]:
    """The pipeline's stages on `raw` in `root`; no scoring during training, which these tests do not read
    and which leaves the trained model as it is (test_train.py has the test)."""
    params: Params = parse_params(raw)
    params = params.model_copy(update={"train": params.train.model_copy(update={"device": "cpu", "eval_every": 0})})
    paths = Paths(root)
    prepare(params, paths)
    reference(params, paths)
    train(params, paths)
    return evaluate(params, paths).metrics


@pytest.mark.slow
def test_digits_default_beats_the_gaussian_mixture_far_and_nears_the_real_data_floor(
    tmp_path: Path, mlflow_uri: str
) -> None:
    # given params.yaml as it ships (what `make run` trains)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # when
    m = _run(raw, tmp_path)
    # then its FID is within a third of the Gaussian mixture's distance from the real-data floor
    # (fid_gmm / 3 itself lies below the floor, which no sampler can beat), and every class is there
    assert m["fid"] - m["fid_floor"] <= (m["fid_gmm"] - m["fid_floor"]) / 3, m
    assert m["modes"] == 10 and m["kl"] <= 3 * m["kl_floor"] + 0.005, m


# what README and RESULTS claim for each preset over its seeds (grid25 0-4, ring8 0-2), with the margin one host's
# kernels move seed 0 by: every mode, the high-quality share, raw G(z)'s modes and the MMD to the mixture
MIXTURE_CLAIMS = {
    "grid25": {"modes": 25, "hq_frac": 0.99, "modes_raw": 21, "mmd": 0.01},
    "ring8": {"modes": 8, "hq_frac": 0.95, "modes_raw": 8, "mmd": 0.015},
}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["grid25", "ring8"])
def test_mixture_preset_covers_every_mode_at_the_data_width(dataset: str, tmp_path: Path, mlflow_uri: str) -> None:
    # given the data set's preset as it ships, on params.yaml (a preset holds only the keys it changes)
    raw = read_preset(REPO / "presets" / f"{dataset}.yaml", REPO / "params.yaml")
    claim = MIXTURE_CLAIMS[dataset]
    # when
    m = _run(raw, tmp_path)
    # then the model output covers every mode with high-quality samples as wide as the data's, close to the
    # mixture in MMD, and raw G(z) alone covers the modes it is claimed to
    assert m["modes"] == claim["modes"] and m["hq_frac"] >= claim["hq_frac"], m
    assert 0.7 <= m["spread"] <= 1.4, m
    assert m["mmd"] <= claim["mmd"], m
    assert m["modes_raw"] >= claim["modes_raw"], m


@pytest.mark.slow
@pytest.mark.heavy  # 4000 steps, then 10,000 samples scored
def test_stacked_digits_preset_shortened_covers_every_mode_early(tmp_path: Path, mlflow_uri: str) -> None:
    """CI's stand-in for the full target below (make test-quality): the README's three claims for the preset,
    after a quarter of its steps and on 10,000 samples (RESULTS.md "stacked-digits" has the measured run and
    its margins)."""
    # given the stacked-digits preset as it ships, cut to 4000 steps and 10,000 samples
    raw = read_preset(REPO / "presets" / "stacked-digits.yaml", REPO / "params.yaml")
    raw["train"] |= {"steps": 4000}
    raw["evaluate"] |= {"n_samples": 10_000}
    # when
    m = _run(raw, tmp_path)
    # then as many modes as real data shows at this sample count, a balance within 1.3x of real data's KL, and
    # at most half the Gaussian mixture's FID
    assert m["modes"] >= m["modes_floor"] and m["kl"] <= 1.3 * m["kl_floor"], m
    assert m["fid"] <= m["fid_gmm"] / 2, m


@pytest.mark.quality  # 16000 steps, then 26,000 samples scored (the stacked MNIST protocol): make test-quality
def test_stacked_digits_preset_covers_every_mode_near_the_real_data_balance(tmp_path: Path, mlflow_uri: str) -> None:
    # given the stacked-digits preset as it ships, on params.yaml (1000 modes: three digits as the channels)
    raw = read_preset(REPO / "presets" / "stacked-digits.yaml", REPO / "params.yaml")
    # when
    m = _run(raw, tmp_path)
    # then every mode is there, their balance is within 1.3x of real data's KL, and the FID is at most half the
    # Gaussian mixture's
    assert m["modes"] == 1000 and m["kl"] <= 1.3 * m["kl_floor"], m
    assert m["fid"] <= m["fid_gmm"] / 2, m


def _stacked_kl_bound(kl_floor: float) -> float:
    """Issue 31's stacked MNIST target: KL at most 0.03 (below every published figure), or 1.3x the real data's
    own KL where that floor is above 0.02 (the classifier's errors and the digits' imbalance put it there)."""
    return 1.3 * kl_floor if kl_floor > 0.02 else 0.03


@pytest.mark.slow
@pytest.mark.heavy  # the 12-epoch classifier, 1000 steps, 2000 samples
def test_mnist10k_preset_shortened_counts_modes_and_halves_the_distance_to_the_mixture_early(
    tmp_path: Path, mlflow_uri: str
) -> None:
    """CI's stand-in for the full target below (make test-quality), its bound set from measured runs: after 1000
    of the preset's steps they sit well inside a third of the mixture's distance above the floor, and the full
    runs reach a fifth (RESULTS.md "Real images" gives the figures and the margin)."""
    # given the MNIST preset as it ships, cut to 1000 steps and 2000 samples
    raw = read_preset(REPO / "presets" / "mnist10k.yaml", REPO / "params.yaml")
    raw["train"] |= {"steps": 1000}
    raw["evaluate"] |= {"n_samples": 2000}
    # when
    m = _run(raw, tmp_path)
    # then the classifier can count modes, every class is there, and FID is within a third of the mixture's
    # distance above the floor
    assert m["classifier_accuracy"] >= 0.985, m
    assert m["modes"] == 10, m
    assert m["fid"] - m["fid_floor"] <= (m["fid_gmm"] - m["fid_floor"]) / 3, m


@pytest.mark.quality  # about 15 min of two cores: make test-quality
def test_mnist10k_preset_reaches_a_fifth_of_the_mixtures_distance_from_the_floor(
    tmp_path: Path, mlflow_uri: str
) -> None:
    # given the MNIST preset as it ships, on params.yaml
    raw = read_preset(REPO / "presets" / "mnist10k.yaml", REPO / "params.yaml")
    # when
    m = _run(raw, tmp_path)
    # then FID within a fifth of the Gaussian mixture's distance above the floor, every class, and a class balance
    # within twice the real data's, scored by a classifier good enough to count modes
    assert m["classifier_accuracy"] >= 0.985, m
    assert m["fid"] - m["fid_floor"] <= (m["fid_gmm"] - m["fid_floor"]) / 5, m
    assert m["modes"] == 10 and m["kl"] <= 2 * m["kl_floor"], m


@pytest.mark.quality  # about 30 min of two cores: make test-quality
def test_stacked_mnist_preset_covers_all_1000_modes_below_the_published_kl(tmp_path: Path, mlflow_uri: str) -> None:
    # given the stacked MNIST preset as it ships, on params.yaml (26,000 samples, the protocol's count)
    raw = read_preset(REPO / "presets" / "stacked-mnist.yaml", REPO / "params.yaml")
    # when
    m = _run(raw, tmp_path)
    # then every mode, at a balance below every published figure (MEG: KL 0.031), or near the real data's own
    assert m["classifier_accuracy"] >= 0.985, m
    assert m["modes"] == 1000 and m["kl"] <= _stacked_kl_bound(m["kl_floor"]), m
