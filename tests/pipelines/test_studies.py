"""The Optuna side of cdgan-tune (pipelines/studies.py) on in-memory studies; the flow's tests are in test_tune.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import yaml

from cdgan.params import load_params, parse_params, read_params_yaml
from cdgan.presets import load_preset
from pipelines import studies
from tests.conftest import REPO


def test_study_plots_leave_matplotlib_style_as_it_was(tmp_path: Path) -> None:
    # given a finished in-memory study, and the process's matplotlib settings before its plots
    import matplotlib.pyplot as plt

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1) ** 2, n_trials=3)
    before = dict(plt.rcParams)
    # when the study's plots are written (optuna's plotting switches to its ggplot style)
    paths = studies.write_plots(study, tmp_path)
    # then the PNGs exist and later pictures of this process (sample grids, scatters) keep the default style
    assert [p.name for p in paths] == ["history.png", "intermediate.png", "importances.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    changed = {k for k, v in plt.rcParams.items() if before.get(k) != v and not k.startswith("backend")}  # Agg: files
    assert not changed, f"rcParams changed by the study's plots: {sorted(changed)[:5]}"


def test_tuned_preset_is_an_overlay_of_params_yaml_with_its_apply_command(tmp_path: Path) -> None:
    # given a project's params.yaml and a finished study whose best trial changed train.lr and kept train.cd_k
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "params.yaml", project / "params.yaml")
    base = read_params_yaml(project / "params.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"train.lr": 3.0e-4, "train.cd_k": base["train"]["cd_k"]})
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-4, 1e-3) + t.suggest_int("train.cd_k", 0, 20), n_trials=1)
    raw = {**base, "train": base["train"] | {key.split(".")[1]: value for key, value in study.best_params.items()}}

    # when the tuned preset is written
    path = studies.write_preset(project, "mine", raw, study, study.best_trial, "fid")

    # then it holds only the key that differs from params.yaml, and on params.yaml gives the best trial's params
    text = path.read_text()
    assert yaml.safe_load(text) == {"train": {"lr": 3.0e-4}}
    assert load_preset(path, project / "params.yaml") == parse_params(raw)
    # and, as the shipped presets must (tests/test_presets.py), it says how to apply it, never to copy it
    assert text.startswith("# ") and "cdgan params apply presets/tuned-mine.yaml" in text and "cp " not in text
    assert "train.cd_k=" in text, "the header lists every value of the search, the unchanged ones too"
    assert load_params(project / "params.yaml") == parse_params(base), "params.yaml is not changed"


def test_differing_keys_keeps_new_and_changed_leaves_only() -> None:
    base = {"data": {"dataset": "digits", "seed": 0}, "train": {"lr": 0.002, "steps": 6000}, "sample": None}
    raw = {"data": {"dataset": "digits", "seed": 0}, "train": {"lr": 0.002, "steps": 3000},
           "sample": {"temperature": 0.01}, "register": {}}  # fmt: skip
    assert studies.differing_keys(raw, base) == {"train": {"steps": 3000}, "sample": {"temperature": 0.01}}
