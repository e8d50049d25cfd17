"""Tests for cdgan.evaluation and the evaluate stage: the metric suite, streaming scores, the feature
extractors' errors, and `cdgan evaluate` (with --model-uri) on a tiny trained project."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from cdgan import registry
from cdgan.classifier import Classifier
from cdgan.cli import main
from cdgan.data import Dataset, build_dataset, load_dataset
from cdgan.errors import CdganError
from cdgan.evaluation import (
    BATCH,
    GMM_PCA_DIMS,
    GMM_SELECT_SAMPLES,
    build_suite,
    reference_points,
    sample_batches,
    score_model,
)
from cdgan.metrics import density_coverage, frechet_distance, precision_recall
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import DataParams, EvaluateParams, ModelParams, Params, Paths, SampleParams, parse_params
from cdgan.presets import overlay_params
from cdgan.reference import load_reference, save_reference
from cdgan.stages.evaluate import evaluate
from cdgan.stages.prepare import prepare
from cdgan.stages.reference import read_reference, reference, scale_hashes
from cdgan.stages.register import register
from cdgan.stages.train import train
from cdgan.stages.trained import load_trained
from tests.conftest import tiny_raw

CPU = torch.device("cpu")
ALL_METRICS = ("fid", "kid", "precision_recall", "density_coverage", "inception_score")
RAW = SampleParams(langevin_steps=0)
REFINED = SampleParams(langevin_steps=2, step_size=0.01)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return build_dataset(DataParams(dataset="digits"))


@pytest.fixture(scope="module")
def reference_path(digits: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) domain classifier and its real-data statistics: enough to compare feature spaces."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reference") / "classifier.pt"
    save_reference(path, Classifier(channels=1, n_classes=10).eval(), torch.from_numpy(digits.x), accuracy=0.5)
    return path


@pytest.fixture(scope="module")
def models(digits: Dataset) -> tuple[Generator, EnergyNet]:
    torch.manual_seed(0)
    generator, energy = build_models(ModelParams(channels=8), digits.shape)
    return generator.eval(), energy.eval()


def test_every_asked_metric_is_reported_in_its_range(
    digits: Dataset, reference_path: Path, models: tuple[Generator, EnergyNet]
) -> None:
    # given every image metric on 300 samples
    ev = EvaluateParams(n_samples=300, metrics=ALL_METRICS, kid_subsets=5, kid_subset_size=100)
    suite = build_suite("digits", digits, reference_path, ev, CPU)
    # when
    metrics = score_model(suite, *models, RAW)
    # then
    expected = {"fid", "fid_raw", "kid", "kid_std", "precision", "recall", "density", "coverage", "inception_score"}
    assert set(metrics.metrics) == expected | {"classifier_accuracy", "modes", "kl"}, "class coverage always"
    assert 1 <= metrics.metrics["modes"] <= 10 and 0 <= metrics.metrics["kl"] <= np.log(10)
    assert metrics.metrics["fid"] > 0 and metrics.metrics["fid_raw"] == metrics.metrics["fid"], "no Langevin: raw = out"
    assert all(0 <= metrics.metrics[k] <= 1 for k in ("precision", "recall", "coverage")), metrics.metrics
    assert 1 <= metrics.metrics["inception_score"] <= 10 and metrics.metrics["density"] >= 0
    assert suite.feature_extractor == "domain" and metrics.preview.shape == (300, 1, 8, 8)


def test_streamed_fid_equals_the_fid_of_all_samples_featurized_at_once(
    digits: Dataset, reference_path: Path, models: tuple[Generator, EnergyNet]
) -> None:
    # given more samples than one batch, so the statistics are accumulated over three batches
    ev = EvaluateParams(n_samples=2 * BATCH + 100)
    suite = build_suite("digits", digits, reference_path, ev, CPU)
    # when
    streamed = score_model(suite, *models, RAW).metrics["fid"]
    # then it equals FID from one matrix of every feature, with NumPy's covariance
    x = torch.cat([x_out for _, x_out in sample_batches(*models, RAW, ev.n_samples, ev.seed)])
    reference = load_reference(reference_path)
    with torch.no_grad():
        features = reference.classifier.features(x).double().numpy()
    whole = frechet_distance(features.mean(0), np.cov(features, rowvar=False), reference.mu, reference.sigma)
    assert streamed == pytest.approx(whole, rel=1e-6)


class _OtherDigits(torch.nn.Module):
    """z -> one of `images`, picked by z: samples as close to real digits as the held-out ones are."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = torch.nn.Parameter(images, requires_grad=False)  # a parameter: samplers read its device

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[(z[:, 0].abs() * 1e4).long() % len(self.images)]


def test_knn_metrics_score_as_many_samples_as_held_out_examples_when_n_samples_is_larger(
    digits: Dataset, reference_path: Path
) -> None:
    # given 150 held-out examples, 3 batches of samples from a generator of the other digits, and the k-NN
    # metrics: more samples help FID, but k-NN radii shrink with the number of points, so unequal sides would
    # bias recall down and coverage up
    heldout = Dataset(digits.x[:150], digits.y[:150])
    generator = Generator(4, _OtherDigits(torch.from_numpy(digits.x[150:])), (1, 8, 8))
    ev = EvaluateParams(n_samples=2 * BATCH + 100, metrics=("fid", "precision_recall", "density_coverage"))
    suite = build_suite("digits", heldout, reference_path, ev, CPU)
    # when
    metrics = score_model(suite, generator, None, RAW).metrics
    # then they equal the metrics of the first 150 samples against the 150 real features
    x = torch.cat([x_out for _, x_out in sample_batches(generator, None, RAW, ev.n_samples, ev.seed)])[:150]
    with torch.no_grad():
        fake = suite.extractor(x)[0]
    expected = precision_recall(suite.real_features, fake, ev.nearest_k) | density_coverage(
        suite.real_features, fake, ev.nearest_k
    )
    assert len(suite.real_features) == 150 and 0 < expected["recall"] < 1 and 0 < expected["coverage"] < 1, expected
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)


def test_samples_depend_on_n_and_seed_only_and_raw_and_refined_share_z(models: tuple[Generator, EnergyNet]) -> None:
    # when
    def draw(n: int, seed: int, sampling: SampleParams) -> tuple[torch.Tensor, torch.Tensor]:
        raw, out = zip(*sample_batches(*models, sampling, n, seed), strict=True)
        return torch.cat(raw), torch.cat(out)

    raw_700, out_700 = draw(BATCH + 200, 0, REFINED)
    raw_500, _ = draw(BATCH, 0, REFINED)
    # then: a longer run begins with the shorter one; Langevin moves the samples; another seed differs
    assert torch.equal(raw_700[:BATCH], raw_500)
    assert not torch.equal(raw_700, out_700)
    assert torch.equal(draw(BATCH, 0, RAW)[0], raw_500), "raw G(z) does not depend on the Langevin settings"
    assert not torch.equal(draw(BATCH, 1, RAW)[0], raw_500)


def test_fid_raw_is_the_fid_of_the_unrefined_samples(
    digits: Dataset, reference_path: Path, models: tuple[Generator, EnergyNet]
) -> None:
    # given one suite, scored without and with Langevin refinement
    suite = build_suite("digits", digits, reference_path, EvaluateParams(n_samples=200), CPU)
    # when
    plain, refined = score_model(suite, *models, RAW).metrics, score_model(suite, *models, REFINED).metrics
    # then
    assert refined["fid_raw"] == pytest.approx(plain["fid"], rel=1e-12)
    assert refined["fid"] != pytest.approx(plain["fid"], rel=1e-6)


def test_points_report_mixture_metrics_and_leave_image_metrics_out() -> None:
    # given a 2-D data set and a params section asking for every image metric
    grid = build_dataset(DataParams(dataset="grid25", n_points=500))
    torch.manual_seed(0)
    generator, energy = build_models(ModelParams(hidden=16), grid.shape)
    ev = EvaluateParams(n_samples=300, metrics=ALL_METRICS, kid_subset_size=100)
    # when
    suite = build_suite("grid25", grid, Path("not-read.pt"), ev, CPU)
    metrics = score_model(suite, generator.eval(), energy.eval(), REFINED).metrics
    # then
    mixture = {"modes", "hq_frac", "spread", "mmd"}
    assert set(metrics) == mixture | {f"{k}_raw" for k in mixture}
    assert suite.feature_extractor == "none"


def test_points_floors_are_those_of_a_perfect_sampler() -> None:
    # given a grid25 suite (scored against fresh draws of the true mixture)
    ev = EvaluateParams(n_samples=2000)
    suite = build_suite("grid25", build_dataset(DataParams(dataset="grid25", n_points=100)), Path("-"), ev, CPU)
    # when
    floors = reference_points(suite, build_dataset(DataParams(dataset="grid25", n_points=100)))
    # then: other fresh draws cover every mode, at the data's width, with a distance that is noise only
    assert floors["modes_floor"] == 25 and floors["hq_frac_floor"] > 0.98, floors
    assert 0.9 < floors["spread_floor"] < 1.1 and abs(floors["mmd_floor"]) < 1e-3, floors


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    """`prepare` of the embedded digits with the shipped data params (a fully trained domain classifier)."""
    paths = Paths(tmp_path_factory.mktemp("prepared-digits"))
    prepare(Params(), paths)
    return paths


def test_digits_floor_is_below_the_gaussian_mixture_baseline(prepared_digits: Paths) -> None:
    # given the held-out split as the reference, the training split behind floor and baseline, and more samples
    # than the mixtures are compared on (the best is scored again on all of them)
    ev = EvaluateParams(n_samples=GMM_SELECT_SAMPLES + 500, metrics=("fid",))
    suite = build_suite("digits", load_dataset(prepared_digits.heldout), prepared_digits.classifier, ev, CPU)
    # when
    points = reference_points(suite, load_dataset(prepared_digits.dataset))
    # then real training digits score better than the best-fitting Gaussian mixture, which is far from trivial
    assert 0 < points["fid_floor"] < points["fid_gmm"], points
    assert points["gmm_components"] in (1, 5, 10, 20, 40)
    assert points["gmm_dims"] == 64, "64 pixels: the mixture is fitted in pixel space, no PCA"
    assert points["modes_floor"] == 10 and points["kl_floor"] < 0.05, points


def test_class_floors_come_from_the_heldout_images_and_fid_floor_from_the_training_ones(prepared_digits: Paths) -> None:
    # given a held-out set of threes only beside the real training split
    ev = EvaluateParams(n_samples=1000, metrics=("fid",))
    heldout = load_dataset(prepared_digits.heldout)
    suite = build_suite("digits", heldout, prepared_digits.classifier, ev, CPU)
    train_split, threes = (
        load_dataset(prepared_digits.dataset),
        Dataset(heldout.x[heldout.y == 3], heldout.y[heldout.y == 3]),
    )
    # when
    with_heldout, without = reference_points(suite, train_split, threes), reference_points(suite, train_split)
    # then the class figures follow the held-out images (nearly all read as threes), the FID floor does not move
    assert with_heldout["modes_floor"] <= 3 and with_heldout["kl_floor"] > 1.5, with_heldout
    assert without["modes_floor"] == 10, without
    assert with_heldout["fid_floor"] == without["fid_floor"]


@pytest.fixture(scope="module")
def low_rank_points(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Reference points of 3x32x32 images drawn from a 10-component Gaussian mixture in a 6-dim subspace of the
    3072 pixels (smooth basis images), against an untrained (seeded) classifier's statistics of a held-out draw."""
    rng = np.random.default_rng(0)

    def smooth(m: int) -> np.ndarray:  # (m, 3072): images constant on 4x4 blocks
        return np.kron(rng.standard_normal((m, 3, 8, 8)), np.ones((1, 1, 4, 4))).reshape(m, -1)

    mean, basis, centres = 0.3 * smooth(1)[0], 0.04 * smooth(6), 3 * rng.standard_normal((10, 6))

    def draw(n: int) -> Dataset:
        y = rng.integers(10, size=n)
        x = (mean + (centres[y] + rng.standard_normal((n, 6))) @ basis).reshape(n, 3, 32, 32)
        return Dataset(x.clip(-1, 1).astype(np.float32), y)

    train_split, heldout = draw(300), draw(300)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("low-rank") / "classifier.pt"
    save_reference(path, Classifier(channels=3, n_classes=10).eval(), torch.from_numpy(heldout.x), accuracy=0.5)
    suite = build_suite("images", heldout, path, EvaluateParams(n_samples=300, metrics=("fid",)), CPU)
    return reference_points(suite, train_split)


def test_gmm_baseline_of_3x32x32_images_is_fitted_in_principal_components(low_rank_points: dict[str, float]) -> None:
    # given 300 training images of 3072 pixels (the fixture)
    points = low_rank_points
    # then every baseline figure is there, from mixtures over the first GMM_PCA_DIMS components, not the pixels
    assert {"fid_gmm", "modes_gmm", "kl_gmm", "gmm_components"} <= set(points), points
    assert points["gmm_dims"] == GMM_PCA_DIMS < 3 * 32 * 32
    assert 0 < points["fid_gmm"] < math.inf and points["gmm_components"] in (1, 5, 10, 20), "<= 30: 10 rows each"
    assert 1 <= points["modes_gmm"] <= 10 and 0 <= points["kl_gmm"] <= math.log(10) + 1e-12, points


def test_gmm_baseline_recovers_a_mixture_on_a_few_principal_components(low_rank_points: dict[str, float]) -> None:
    # given images that are themselves a Gaussian mixture in 6 dims, inside the principal components kept
    points = low_rank_points
    # then the baseline's samples score as resampled training images do; mixtures on too few components, with
    # the PCA mean lost or with one component alive score several times the floor
    assert points["fid_gmm"] < 1.5 * points["fid_floor"], points


def test_prepare_reports_the_classifier_accuracy_on_the_held_out_split(prepared_digits: Paths) -> None:
    # given the saved classifier and the held-out split
    reference = load_reference(prepared_digits.classifier)
    heldout = load_dataset(prepared_digits.heldout)
    # when it is scored again on that split
    with torch.no_grad():
        logits = reference.classifier(torch.from_numpy(heldout.x))
    accuracy = (logits.argmax(1) == torch.from_numpy(heldout.y)).double().mean().item()
    # then prepare.json reports exactly that accuracy, and it is a real classifier's
    reported = json.loads((prepared_digits.metrics / "prepare.json").read_text())["classifier_accuracy"]
    assert reported == pytest.approx(accuracy, abs=1e-12) and accuracy > 0.85


def test_missing_inception_weights_give_one_clear_error(digits: Dataset, reference_path: Path, tmp_path: Path) -> None:
    # given the Inception extractor asked for, with no weights file (none can be downloaded here)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    ev = EvaluateParams(feature_extractor="inception", inception_weights=str(weights))
    # when / then
    with pytest.raises(CdganError, match=r"evaluate\.inception_weights=.*file not found.*pytorch-fid"):
        build_suite("digits", digits, reference_path, ev, CPU)
    assert list(tmp_path.iterdir()) == [], "nothing downloaded or created"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"metrics": ("fid", "kid"), "kid_subset_size": 201}, "evaluate.kid_subset_size=201"),
        ({"metrics": ("fid", "precision_recall"), "nearest_k": 200}, "evaluate.nearest_k=200"),
        ({"metrics": ("fid", "density_coverage"), "nearest_k": 250}, "evaluate.nearest_k=250"),
    ],
)
def test_sizes_beyond_the_samples_are_refused_before_sampling(
    digits: Dataset, reference_path: Path, override: dict, key: str
) -> None:
    ev = EvaluateParams(n_samples=200, **override)
    with pytest.raises(CdganError, match=key):
        build_suite("digits", digits, reference_path, ev, CPU)


# --- the evaluate stage and `cdgan evaluate --model-uri` ------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str) -> Paths:
    """A tiny prepared, trained, evaluated and registered project on the digits, asking for every metric."""
    raw = tiny_raw(
        evaluate={"metrics": list(ALL_METRICS), "kid_subsets": 5, "kid_subset_size": 100},
        sample={"langevin_steps": 2},
        register={"model_name": "cdgan-evaluate-test"},
    )
    paths = Paths(tmp_path_factory.mktemp("evaluate-project"))
    params = parse_params(raw)
    prepare(params, paths)
    reference(params, paths)
    train(params, paths)
    evaluate(params, paths)
    register(params, paths)
    (paths.root / "params.yaml").write_text(json.dumps(raw))  # JSON is YAML: `cdgan` reads it from the project
    return paths


def test_evaluate_writes_every_asked_metric_to_eval_json_and_mlflow(project: Paths) -> None:
    # when (the fixture ran prepare, train, evaluate)
    evaluation = json.loads(project.eval_metrics.read_text())
    # then
    keys = {"fid", "fid_raw", "kid", "kid_std", "precision", "recall", "density", "coverage", "inception_score"}
    keys |= {"fid_floor", "kid_floor", "fid_gmm", "kl_floor", "modes_floor", "gmm_components"}  # reference points
    assert keys <= set(evaluation), sorted(evaluation)
    assert evaluation["feature_extractor"] == "domain" and evaluation["n_samples"] == 200
    assert evaluation["fid_raw"] != evaluation["fid"], "2 Langevin steps move the samples"
    # fid also has a training history (train.eval_every), so look for the evaluate value in each history
    client = MlflowClient()
    for key in keys:
        history = [m.value for m in client.get_metric_history(evaluation["mlflow_run_id"], key)]
        assert evaluation[key] in history, f"{key}: {evaluation[key]} not in the MLflow history {history}"


def test_evaluate_reads_the_reference_points_the_reference_stage_scored(project: Paths) -> None:
    # given the reference stage's file and the evaluation (the fixture ran both)
    saved = json.loads(project.reference_metrics.read_text())
    evaluation = json.loads(project.eval_metrics.read_text())
    # then every reference point is in eval.json as the stage scored it, with what it was scored on beside it
    points = {k: v for k, v in saved.items() if k != "scored_on"}
    assert {"fid_floor", "kid_floor", "fid_gmm", "kl_floor"} <= set(points)
    assert {k: evaluation[k] for k in points} == points
    assert saved["scored_on"]["n_samples"] == 200 and saved["scored_on"]["data_sha256"] == evaluation["data_sha256"]


@pytest.mark.parametrize(
    "edit", [{"evaluate": {"n_samples": 150}}, {"evaluate": {"seed": 1}}, {"data": {"dataset": "stacked-digits"}}]
)
def test_evaluate_refuses_reference_points_scored_on_other_settings(
    project: Paths, tmp_path: Path, mlflow_uri: str, edit: dict
) -> None:
    # given a copy of the project whose params changed after the reference stage ran (a stage run by hand)
    paths = Paths(shutil.copytree(project.root, tmp_path / "project"))
    raw = json.loads((paths.root / "params.yaml").read_text())
    edited = parse_params(overlay_params(raw, edit))
    # when evaluate runs, then it names the file and the fix, and writes nothing
    before = paths.eval_metrics.read_bytes()
    with pytest.raises(
        CdganError, match=r"reference\.json was scored on other data or evaluate settings.*cdgan reference"
    ):
        evaluate(edited, paths)
    assert paths.eval_metrics.read_bytes() == before
    # and once the reference stage reruns on the new settings, those are the points evaluate reads
    if "evaluate" in edit:
        assert reference(edited, paths).points == read_reference(edited, paths)


def test_evaluate_model_uri_writes_only_out_with_the_same_metrics(
    project: Paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the DVC outputs of the project as they are
    monkeypatch.chdir(project.root)
    before = {path: path.read_bytes() for path in (project.eval_metrics, project.eval_plots / "samples.png")}
    # when the registered version is evaluated
    main(["evaluate", "--model-uri", "models:/cdgan-evaluate-test/1", "--out", "registered.json"])
    # then its metrics (same networks, same Langevin settings, same seed) land in --out only
    registered, evaluation = (
        json.loads(Path("registered.json").read_text()),
        json.loads(project.eval_metrics.read_text()),
    )
    assert registered["model_uri"] == "models:/cdgan-evaluate-test/1"
    assert all(registered[key] == evaluation[key] for key in ("fid", "fid_raw", "kid", "precision", "coverage"))
    assert {path: path.read_bytes() for path in before} == before, "DVC outputs untouched"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--model-uri", "models:/cdgan-evaluate-test/1"], "--model-uri and --out go together"),
        (["evaluate", "--out", "x.json"], "--model-uri and --out go together"),
        (["evaluate", "--model-uri", "models:/cdgan-evaluate-test/1", "--out", "metrics/eval.json"], "DVC output"),
    ],
)
def test_evaluate_model_uri_refuses_to_touch_dvc_outputs(
    project: Paths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    monkeypatch.chdir(project.root)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and message in err, err
    assert not Path("x.json").exists()


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        (["kid"], r"evaluate\.metrics: .*must include fid"),
        (["fid", "kid", "fid"], r"evaluate\.metrics: .*twice"),
        (["fid", "is"], r"evaluate\.metrics\.1: "),
    ],
)
def test_evaluate_metrics_are_checked_when_params_load(metrics: list[str], message: str) -> None:
    with pytest.raises(CdganError, match=message):
        parse_params({"evaluate": {"metrics": metrics}})


def test_scale_hashes_are_those_of_the_files_behind_each_extractor(tmp_path: Path) -> None:
    # given a prepared folder of three distinct files and an Inception weights file
    paths = Paths(tmp_path)
    paths.prepared.mkdir(parents=True)
    weights = tmp_path / "inception.pth"
    for i, path in enumerate((paths.dataset, paths.heldout, paths.classifier, weights)):
        path.write_bytes(bytes([i]) * 10)

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    # when each extractor's hashes are taken
    domain = scale_hashes("domain", EvaluateParams(), paths)
    inception = scale_hashes(
        "inception", EvaluateParams(feature_extractor="inception", inception_weights=str(weights)), paths
    )
    points = scale_hashes("none", EvaluateParams(), paths)

    # then the real side is the held-out split, the network the classifier file or the weights, and 2-D data,
    # scored against fresh draws of the true mixture with no network, has neither
    assert domain == {"data_sha256": sha(paths.dataset), "reference_sha256": sha(paths.heldout),
                      "features_sha256": sha(paths.classifier)}  # fmt: skip
    assert inception == domain | {"features_sha256": sha(weights)}
    assert points == {"data_sha256": sha(paths.dataset), "reference_sha256": "none", "features_sha256": "none"}


def test_eval_json_and_the_version_carry_the_terms_the_champion_gate_compares(project: Paths) -> None:
    # given the project's evaluation and the version registered from it (the fixture ran both)
    evaluation = json.loads(project.eval_metrics.read_text())
    tags = MlflowClient().get_model_version("cdgan-evaluate-test", "1").tags

    # then eval.json records each term from its source, and the version holds them as the gate's tags
    assert (evaluation["n_samples"], evaluation["seed"]) == (200, 0)
    assert evaluation["features_sha256"] == hashlib.sha256(project.classifier.read_bytes()).hexdigest()
    assert evaluation["reference_sha256"] == hashlib.sha256(project.heldout.read_bytes()).hexdigest()
    assert evaluation["data_sha256"] == hashlib.sha256(project.dataset.read_bytes()).hexdigest()
    assert {key: tags[key] for key in registry.SCALE_KEYS} == {key: str(evaluation[key]) for key in registry.SCALE_KEYS}


def test_register_refuses_an_evaluation_without_the_gate_terms(project: Paths, tmp_path: Path) -> None:
    # given a copy of the project whose eval.json was written before the seed was recorded
    paths = Paths(shutil.copytree(project.root, tmp_path / "project"))
    evaluation = json.loads(paths.eval_metrics.read_text())
    del evaluation["seed"]
    paths.eval_metrics.write_text(json.dumps(evaluation))
    versions = len(MlflowClient().search_model_versions("name = 'cdgan-evaluate-test'"))

    # when / then register names the missing term and the fix, and registers nothing
    params = parse_params(json.loads((paths.root / "params.yaml").read_text()))
    with pytest.raises(CdganError, match=r"eval\.json: lacks \['seed'\].*rerun evaluate"):
        register(params, paths)
    assert len(MlflowClient().search_model_versions("name = 'cdgan-evaluate-test'")) == versions


def test_class_coverage_counts_modes_and_kl_to_uniform() -> None:
    from cdgan.evaluation import class_coverage

    uniform = class_coverage(torch.arange(10).repeat(3), 10)
    assert uniform == {"modes": 10.0, "kl": pytest.approx(0.0, abs=1e-12)}
    collapsed = class_coverage(torch.zeros(30, dtype=torch.long), 10)
    assert collapsed["modes"] == 1.0 and collapsed["kl"] == pytest.approx(math.log(10))


def test_register_logs_the_evaluation_on_the_logged_model(project: Paths) -> None:
    # given the project's registered version (the fixture ran register after evaluate)
    import mlflow

    evaluation = json.loads(project.eval_metrics.read_text())
    version = MlflowClient().get_model_version("cdgan-evaluate-test", "1")
    # when its logged model (the version's source, models:/m-...) is read
    logged = mlflow.get_logged_model(version.source.removeprefix("models:/"))
    # then it holds every number of metrics/eval.json, reference points included
    metrics = {metric.key: metric.value for metric in logged.metrics}
    for key in ("fid", "fid_floor", "fid_gmm", "kl_floor"):
        assert metrics[key] == pytest.approx(evaluation[key]), key


def test_kid_separates_a_trained_model_from_an_untrained_one_and_its_floor_is_near_zero(
    project: Paths, prepared_digits: Paths
) -> None:
    # given the fully trained domain classifier of the shipped params, whose unnormalised features are far from
    # the scale of KID's kernel, and the project's model (a few training steps) beside an untrained one
    params = parse_params(json.loads((project.root / "params.yaml").read_text()))
    ev = EvaluateParams(n_samples=300, metrics=("fid", "kid"), kid_subsets=10, kid_subset_size=100)
    train_split = load_dataset(prepared_digits.dataset)
    suite = build_suite("digits", load_dataset(prepared_digits.heldout), prepared_digits.classifier, ev, CPU)
    trained = load_trained(params, project, train_split.shape)
    torch.manual_seed(1)
    untrained = [net.eval() for net in build_models(params.model, train_split.shape)]

    # when
    scores = score_model(suite, *trained, params.sample).metrics
    kid_untrained = score_model(suite, *untrained, params.sample).metrics["kid"]
    kid_floor = reference_points(suite, train_split)["kid_floor"]

    # then the training data score near 0, the trained model well above its noise and far below the untrained one
    assert abs(kid_floor) < 0.1, kid_floor
    assert kid_floor + 5 * scores["kid_std"] < scores["kid"] < kid_untrained / 4, (kid_floor, scores, kid_untrained)
