"""Slow: the grid25 preset trains CD to cover most of the 25 modes (run with `make test-slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cdgan.params import Paths, parse_params
from cdgan.stages import evaluate, prepare, train
from tests.conftest import REPO


@pytest.mark.slow
def test_grid25_preset_covers_most_modes_after_refinement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_uri: str
) -> None:
    # given the grid25 preset as it ships (3000 steps with 20-step chains: 3 minutes of training on a quiet CPU)
    monkeypatch.chdir(tmp_path)
    params = parse_params(yaml.safe_load((REPO / "presets" / "grid25.yaml").read_text()))
    params = params.model_copy(update={"train": params.train.model_copy(update={"device": "cpu"})})

    # when the pipeline runs prepare -> train -> evaluate
    prepare(params, Paths())
    train(params, Paths())
    metrics = evaluate(params, Paths()).metrics

    # then the refined samples cover most modes, most of them close to a mode, and refinement is what helps
    assert metrics["modes"] >= 20, metrics
    assert metrics["hq_frac"] >= 0.6, metrics
    assert metrics["hq_frac"] > metrics["hq_frac_raw"], metrics
