"""Registry: the pyfunc sampler and the gated champion alias, on a real MLflow store."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cdgan import registry
from cdgan.models import build_models
from cdgan.params import ModelParams

COMPARABLE = {"dataset": "grid25", "feature_extractor": "none"}


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
        {"langevin_steps": 3, "step_size": 0.01, "noise": 0.0},
    )
    mlflow.set_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run():
        return registry.log_sampler(bundle)


def _register(
    uri: str, name: str, modes: float, comparable: dict[str, str] = COMPARABLE, **kw: object
) -> registry.Registration:
    return registry.register_version(uri, name, "modes", modes, False, comparable, 0.0, **kw)


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


def test_lower_is_better_metrics_and_margin(sampler_uri: str) -> None:
    name = f"fid-{uuid.uuid4().hex[:8]}"
    registry.register_version(sampler_uri, name, "fid", 10.0, True, COMPARABLE, 1.0)
    small_gain = registry.register_version(sampler_uri, name, "fid", 9.5, True, COMPARABLE, 1.0)
    big_gain = registry.register_version(sampler_uri, name, "fid", 8.0, True, COMPARABLE, 1.0)
    assert (small_gain.alias, big_gain.alias) == ("challenger", "champion")


def test_mismatched_dataset_is_refused_and_force_overrides(sampler_uri: str) -> None:
    name = f"mismatch-{uuid.uuid4().hex[:8]}"
    _register(sampler_uri, name, 10)
    other = _register(sampler_uri, name, 25, {"dataset": "ring8", "feature_extractor": "none"})
    assert other.alias == "challenger" and "not comparable" in other.reason
    forced = _register(sampler_uri, name, 1, force=True)
    assert forced.alias == "champion" and forced.reason.startswith("forced")
    assert _champion(name) == forced.version


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
