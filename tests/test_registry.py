"""Registry: the pyfunc sampler and the gated champion alias, on a real MLflow store."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution

from cdgan import registry, store
from cdgan.models import build_models
from cdgan.params import DataParams, ModelParams, Params, Paths, RegisterParams, SampleParams
from cdgan.ranking import IMAGE_OBJECTIVE, MIXTURE_OBJECTIVE, objective_for
from cdgan.stages.sample import sample
from pipelines import flows, studies
from tests.conftest import REPO, run

# the gate's terms (registry.SCALE_KEYS) as the register stage reads them from metrics/eval.json
COMPARABLE = {"dataset": "digits", "data_sha256": "d474", "feature_extractor": "domain", "features_sha256": "fea7",
              "reference_sha256": "4e1d", "n_samples": "2000", "seed": "0"}  # fmt: skip
# a value of each term that another evaluation would have recorded
OTHER_TERMS = {"dataset": "mnist10k", "data_sha256": "0d47", "feature_extractor": "inception",
               "features_sha256": "7ea7", "reference_sha256": "d1e4", "n_samples": "10000", "seed": "1"}  # fmt: skip


@pytest.fixture(scope="module")
def sampler_uri(mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One logged sampler over a random 2-D generator: registry tests register it under fresh names."""
    mlflow.set_tracking_uri(mlflow_uri)
    model = ModelParams(hidden=8)
    generator, energy = build_models(model, (2,))
    bundle = registry.save_bundle(
        tmp_path_factory.mktemp("bundle") / "bundle.pt",
        model,
        (2,),
        generator.state_dict(),
        energy.state_dict(),
        SampleParams(langevin_steps=3, step_size=0.01),
    )
    mlflow.set_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run():
        return registry.log_sampler(bundle)


def _register(
    uri: str, name: str, modes: float, comparable: dict[str, str] = COMPARABLE, hq_frac: float = 0.5, **kw: object
) -> registry.Registration:
    metrics = {"modes": modes, "hq_frac": hq_frac}
    return registry.register_version(uri, name, MIXTURE_OBJECTIVE, metrics, comparable, 0.0, **kw)


def _register_fid(uri: str, name: str, fid: float, margin: float = 0.0) -> registry.Registration:
    return registry.register_version(uri, name, IMAGE_OBJECTIVE, {"fid": fid}, COMPARABLE, margin)


def _champion(name: str) -> int:
    return int(MlflowClient().get_model_version_by_alias(name, registry.CHAMPION).version)


def test_first_version_is_champion_a_worse_one_is_not_a_better_one_is(sampler_uri: str) -> None:
    name = f"gate-{uuid.uuid4().hex[:8]}"
    first = _register(sampler_uri, name, 20)
    assert (first.alias, _champion(name)) == ("champion", first.version)

    worse = _register(sampler_uri, name, 18)
    assert worse.alias == "challenger" and "does not beat" in worse.reason
    assert _champion(name) == first.version, "a worse model must leave the alias where it was"

    better = _register(sampler_uri, name, 25)
    assert better.alias == "champion" and _champion(name) == better.version
    reason = MlflowClient().get_model_version(name, str(worse.version)).tags["alias_reason"]
    assert reason == worse.reason, "the reason is stored as a tag"


# One registration in a fresh process: model URI, name, `modes` value and the gate's terms (JSON) from argv.
_REGISTER = """
import json, sys
from cdgan import registry
from cdgan.ranking import MIXTURE_OBJECTIVE
uri, name, modes, comparable = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
reg = registry.register_version(uri, name, MIXTURE_OBJECTIVE, {"modes": modes, "hq_frac": 0.5}, comparable, 0.0)
print(reg.version, reg.alias)
"""


def test_concurrent_registrations_take_turns_on_the_alias_and_the_better_one_wins(
    sampler_uri: str, mlflow_uri: str
) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(mlflow_uri)

    # given the alias lock held here while two processes register versions (modes 20, then the better 25)
    with store.store_lock(mlflow_uri, f"alias-{name}"):
        procs = {
            modes: subprocess.Popen(
                [sys.executable, "-c", _REGISTER, sampler_uri, name, str(modes), json.dumps(COMPARABLE)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for modes in (20, 25)
        }
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            versions = client.search_model_versions(f"name = '{name}'")
            if len(versions) == 2 and all("forced" in v.tags for v in versions):
                break
            assert all(proc.poll() is None for proc in procs.values()), [p.communicate() for p in procs.values()]
            time.sleep(0.2)

        # then both versions exist with their gate terms, and neither has moved an alias: both wait for the lock
        assert len(versions) == 2 and all("forced" in v.tags for v in versions), "versions were not registered"
        assert client.get_registered_model(name).aliases == {}, "an alias moved while the lock was held"
        assert all(proc.poll() is None for proc in procs.values())

    # when the lock is released, they decide one after the other
    outputs = {modes: proc.communicate(timeout=120) for modes, proc in procs.items()}
    for modes, proc in procs.items():
        assert proc.returncode == 0, outputs[modes][1][-3000:]

    # then the better version is champion, whichever went first
    better, better_alias = outputs[25][0].split()
    assert better_alias == "champion", outputs
    assert client.get_registered_model(name).aliases[registry.CHAMPION] == int(better)

    # and the second one was judged against the first, not against the empty registry both started from
    reasons = {v.version: v.tags["alias_reason"] for v in client.search_model_versions(f"name = '{name}'")}
    first, second = sorted(reasons, key=lambda v: not reasons[v].startswith("first version"))
    assert reasons[first] == "first version" and f"champion v{first} " in reasons[second], reasons


def test_lower_is_better_metrics_and_margin(sampler_uri: str) -> None:
    name = f"fid-{uuid.uuid4().hex[:8]}"
    _register_fid(sampler_uri, name, 10.0, margin=1.0)
    small_gain = _register_fid(sampler_uri, name, 9.5, margin=1.0)
    big_gain = _register_fid(sampler_uri, name, 8.0, margin=1.0)
    assert (small_gain.alias, big_gain.alias) == ("challenger", "champion")


@pytest.mark.parametrize("is_image", [False, True])
def test_a_tie_with_the_champion_is_a_challenger_even_with_no_margin(sampler_uri: str, is_image: bool) -> None:
    # given a champion with fid (lower is better) or modes (higher) 10
    name = f"tie-{uuid.uuid4().hex[:8]}"
    register = _register_fid if is_image else _register
    first = register(sampler_uri, name, 10.0)
    # when a version with the same value is registered, min_improvement 0
    tie = register(sampler_uri, name, 10.0)
    # then it must beat the champion, not equal it: the alias stays
    assert tie.alias == "challenger" and "does not beat" in tie.reason, tie
    assert _champion(name) == first.version


def test_2d_versions_rank_by_modes_then_hq_frac(sampler_uri: str) -> None:
    # given a champion covering 25 modes with half its samples near a mode
    name = f"tiebreak-{uuid.uuid4().hex[:8]}"
    first = _register(sampler_uri, name, 25, hq_frac=0.5)
    # when a version with one mode fewer but nearly every sample on a mode is registered
    fewer = _register(sampler_uri, name, 24, hq_frac=0.99)
    # then it does not take the alias: a mode more outweighs any hq_frac
    assert fewer.alias == "challenger", fewer
    # when a version with as many modes and more samples near them is registered (modes alone called it a tie)
    sharper = _register(sampler_uri, name, 25, hq_frac=0.9)
    # then it takes the alias, and the reason names both figures of both versions
    assert sharper.alias == "champion" and _champion(name) == sharper.version, sharper
    assert sharper.reason == f"modes 25, hq_frac 0.9 beats champion v{first.version} (modes 25, hq_frac 0.5)"


@pytest.mark.parametrize(
    ("dataset", "candidates", "winner"),
    [
        # 2-D: the tuner ranked by modes + hq_frac / 2 and the gate by modes alone, so the gate kept cd (bce only
        # tied it on modes) while the study's best was bce
        ("grid25", {"cd": (25, 0.7), "bce": (25, 0.9), "hinge": (24, 0.99)}, "bce"),
        ("digits", {"cd": (9.0,), "bce": (4.0,), "hinge": (6.0,)}, "bce"),
    ],
)
def test_the_gate_the_tuner_and_the_sweep_report_pick_the_same_winner(
    sampler_uri: str, tmp_path: Path, dataset: str, candidates: dict[str, tuple[float, ...]], winner: str
) -> None:
    # given the evaluations of three settings on one data set
    data = DataParams(dataset=dataset)
    objective = objective_for(data.is_image)
    metrics = {label: dict(zip(objective.keys, values, strict=True)) for label, values in candidates.items()}

    # when each is registered in turn, with no margin
    name = f"agree-{uuid.uuid4().hex[:8]}"
    versions = {
        registry.register_version(sampler_uri, name, objective, m, COMPARABLE, 0.0).version: label
        for label, m in metrics.items()
    }
    # and told to a study as cdgan-tune tells its trials
    space = {"train.lr": FloatDistribution(1e-4, 1e-3)}
    study = studies.open_study(f"sqlite:///{tmp_path / 'optuna.db'}", name, data, space, logging.getLogger())
    for label, m in metrics.items():
        trial = study.ask(space)
        trial.set_user_attr("label", label)
        study.tell(trial, objective.score(m))
    # and compared in a sweep report, one row per setting
    rows = [{"train.loss": label} | m for label, m in metrics.items()]
    markdown = flows.write_report(tmp_path, "agree", rows, ["train.loss"], Params(data=data), [])

    # then the champion, the study's best trial and the report's first rank are the same setting
    with (tmp_path / "agree.csv").open() as f:
        ranks = {row["train.loss"]: int(row["rank"]) for row in csv.DictReader(f)}
    assert versions[_champion(name)] == winner, "registry"
    assert study.best_trial.user_attrs["label"] == winner, "tuner"
    assert min(ranks, key=ranks.get) == winner and f"`train.loss={winner}`" in markdown, ("sweep report", ranks)


def test_a_champion_without_the_metric_is_not_compared_and_keeps_the_alias(sampler_uri: str) -> None:
    # given a champion registered on `modes`
    name = f"nometric-{uuid.uuid4().hex[:8]}"
    first = _register(sampler_uri, name, 20)
    # when a version is registered on `fid`, which the champion was never scored on
    other = _register_fid(sampler_uri, name, 1.0)
    # then it is a challenger that names the missing metric, and the champion stays
    assert other.alias == "challenger", other
    assert other.reason == f"not comparable with champion v{first.version}: fid missing"
    assert _champion(name) == first.version


def test_mismatched_dataset_is_refused_and_force_overrides(sampler_uri: str) -> None:
    name = f"mismatch-{uuid.uuid4().hex[:8]}"
    _register(sampler_uri, name, 10)
    other = _register(sampler_uri, name, 25, COMPARABLE | {"dataset": "ring8"})
    assert other.alias == "challenger" and "not comparable" in other.reason
    forced = _register(sampler_uri, name, 1, force=True)
    assert forced.alias == "champion" and forced.reason.startswith("forced")
    assert _champion(name) == forced.version
    forced_tags = {
        v: MlflowClient().get_model_version(name, str(v)).tags["forced"] for v in (other.version, forced.version)
    }
    assert forced_tags == {other.version: "false", forced.version: "true"}, "--force is recorded on the version"


def test_version_carries_the_given_tags_and_the_gate_terms(sampler_uri: str) -> None:
    name = f"tags-{uuid.uuid4().hex[:8]}"
    reg = _register(sampler_uri, name, 12, tags={"git_commit": "abc", "n_samples": "2000.0"})
    tags = MlflowClient().get_model_version(name, str(reg.version)).tags
    own = {"git_commit": "abc", "metric": "modes+hq_frac/2", "modes": "12", "hq_frac": "0.5", "forced": "false"}
    assert {k: tags[k] for k in [*own, *COMPARABLE]} == own | COMPARABLE, "the gate's terms win over a given tag"


@pytest.mark.parametrize("key", list(OTHER_TERMS))
def test_a_better_version_measured_on_other_terms_is_not_ranked_against_the_champion(
    sampler_uri: str, key: str
) -> None:
    # given a champion with modes 10, measured on COMPARABLE's terms
    name = f"scale-{key.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    first = _register(sampler_uri, name, 10)

    # when a version with modes 25 is registered whose evaluation differs in `key` alone (for n_samples: scored on
    # 10,000 samples against the champion's 2,000, which alone lowers FID)
    other = _register(sampler_uri, name, 25, COMPARABLE | {key: OTHER_TERMS[key]})

    # then it is a challenger whose reason names that term with both values, and the champion stays
    assert other.alias == "challenger", other
    mismatch = {key: (COMPARABLE[key], OTHER_TERMS[key])}
    assert other.reason == f"not comparable with champion v{first.version}: {mismatch}"
    assert _champion(name) == first.version

    # and the same value measured on the champion's terms takes the alias
    assert _register(sampler_uri, name, 25).alias == "champion"


def test_the_gate_compares_every_term_that_sets_the_scale_of_the_metric() -> None:
    # the register stage compares on registry.SCALE_KEYS; the test above checks each of OTHER_TERMS, so a term
    # added there without a test, or one dropped, fails here
    assert sorted(registry.SCALE_KEYS) == sorted(OTHER_TERMS)


def test_png_format_is_refused_for_points_and_unknown_formats(sampler_uri: str) -> None:
    model = mlflow.pyfunc.load_model(sampler_uri)
    rows = pd.DataFrame({"n": [2], "seed": [0]})
    with pytest.raises(MlflowException, match="needs an image model"):
        model.predict(rows, params={"format": "png"})
    with pytest.raises(MlflowException, match="format must be one of"):
        model.predict(rows, params={"format": "gif"})
    assert model.predict(rows, params={"format": "array"}).shape == (2, 2)


def test_sample_stage_loads_by_alias_and_is_deterministic_per_seed(
    sampler_uri: str, tiny_params: Params, tmp_path: Path
) -> None:
    # given a champion
    name = f"sample-{uuid.uuid4().hex[:8]}"
    _register(sampler_uri, name, 10)
    params = tiny_params.model_copy(update={"register": RegisterParams(model_name=name)})

    # when `cdgan sample` runs twice with one seed and once with another
    draws = [
        np.load(sample(params, Paths(tmp_path), 6, seed, tmp_path / f"{i}.npy")) for i, seed in enumerate((4, 4, 5))
    ]

    # then the same seed gives the same samples, another seed others
    assert draws[0].shape == (6, 2)
    np.testing.assert_array_equal(draws[0], draws[1])
    assert not np.allclose(draws[0], draws[2])


def test_registered_version_carries_lineage_metrics_params_and_picture(
    dvc_repo: Path, dvc_paths: Paths, mlflow_uri: str, tmp_path: Path
) -> None:
    # given the version `dvc repro` registered
    client = MlflowClient(mlflow_uri)
    version = client.get_model_version_by_alias("cdgan-dvc-test", "champion")
    register = json.loads(dvc_paths.register_metrics.read_text())
    evaluation = json.loads(dvc_paths.eval_metrics.read_text())
    run_id = json.loads(dvc_paths.train_metrics.read_text())["mlflow_run_id"]
    commit = run(["git", "rev-parse", "HEAD"], dvc_repo).stdout.strip()

    # then the version leads to the commit, the data and the run, and holds the evaluation
    tags = version.tags
    assert int(version.version) == register["version"] and version.run_id == run_id
    assert tags["git_commit"] == commit and tags["git_dirty"] == "false", "a committed project is clean"
    assert tags["data_sha256"] == hashlib.sha256(dvc_paths.dataset.read_bytes()).hexdigest()
    assert tags["mlflow_run_id"] == run_id and tags["forced"] == "false"
    assert float(tags["fid"]) == evaluation["fid"] and tags["metric"] == "fid"

    # and the gate's terms are the evaluation's: its params and the hashes of the files behind the figures
    assert {key: tags[key] for key in registry.SCALE_KEYS} == {key: str(evaluation[key]) for key in registry.SCALE_KEYS}
    assert (tags["n_samples"], tags["seed"], tags["feature_extractor"]) == ("200", "0", "domain")
    assert tags["features_sha256"] == hashlib.sha256(dvc_paths.classifier.read_bytes()).hexdigest()
    assert tags["reference_sha256"] == hashlib.sha256(dvc_paths.heldout.read_bytes()).hexdigest()

    # and the run leads back to the version, with the same lineage
    run_tags = client.get_run(run_id).data.tags
    assert run_tags["model_version"] == str(register["version"]) and run_tags["model_name"] == "cdgan-dvc-test"
    assert run_tags["dvc_lock_sha256"] == tags["dvc_lock_sha256"]

    # and the model holds the params it was registered with and the sample grid
    uri = f"models:/cdgan-dvc-test/{version.version}"
    assert mlflow.models.get_model_info(uri).metadata["cdgan_params"]["register.model_name"] == "cdgan-dvc-test"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    picture = (dvc_paths.eval_plots / "samples.png").read_bytes()
    assert (local / "artifacts" / "samples.png").read_bytes() == picture


def test_pyfunc_sampler_is_deterministic_per_seed(sampler_uri: str) -> None:
    model = mlflow.pyfunc.load_model(sampler_uri)
    a = model.predict(pd.DataFrame({"n": [5], "seed": [7]}))
    b = model.predict(pd.DataFrame({"n": [5], "seed": [7]}))
    c = model.predict(pd.DataFrame({"n": [5], "seed": [8]}))
    assert a.shape == (5, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_loading_a_missing_model_is_a_clear_error(mlflow_uri: str, tmp_path: Path) -> None:
    from cdgan.errors import CdganError

    mlflow.set_tracking_uri(mlflow_uri)
    with pytest.raises(CdganError, match=r"models:/absent-model@champion.*dvc repro"):
        registry.load_sampler("models:/absent-model@champion")
