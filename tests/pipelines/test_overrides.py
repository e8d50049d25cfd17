"""The params a flow runs (pipelines/overrides.py): presets and overrides on params.yaml, a sweep's trials."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from benchmarks.harness import TINY

from cdgan.errors import CdganError
from cdgan.params import TrainParams, load_params
from pipelines import overrides
from tests.conftest import tiny_raw


def _overlay_project(tmp_path: Path) -> tuple[Path, str]:
    """A project directory whose params.yaml (a comment included) sets digits keys a preset does not touch, and
    an overlay preset in presets/ that changes two keys."""
    project = tmp_path / "project"
    project.mkdir()
    text = yaml.safe_dump(tiny_raw(train={"batch_size": 128}), sort_keys=False)
    (project / "params.yaml").write_text("# my project\n" + text.replace("  seed: 0\n", "  seed: 0  # mine\n", 1))
    (project / "presets").mkdir()
    (project / "presets" / "short.yaml").write_text(yaml.safe_dump({"train": {"steps": 12, "cd_k": 3}}))
    return project, "presets/short.yaml"


def test_a_preset_goes_on_top_of_params_yaml_and_overrides_on_top_of_both(tmp_path: Path) -> None:
    # given a project and an overlay preset that sets train.steps and train.cd_k only
    project, preset = _overlay_project(tmp_path)
    base = yaml.safe_load((project / "params.yaml").read_text())

    # when the params are resolved for the preset with an override of one of its keys
    raw = overrides.resolve_params(project, preset, {"train.cd_k": 5})

    # then the preset's other key and the override are in, and every other key is params.yaml's, not a default
    assert raw["train"]["steps"] == 12 and raw["train"]["cd_k"] == 5
    assert raw["train"]["batch_size"] == 128 != TrainParams().batch_size, "params.yaml's value, not the schema's"
    assert raw == {**base, "train": {**base["train"], "steps": 12, "cd_k": 5}}
    # and params.yaml on itself is itself
    assert overrides.resolve_params(project, "params.yaml", {}) == base


def test_pipeline_writes_only_the_changed_keys_into_params_yaml(tmp_path: Path) -> None:
    # given a project with a commented params.yaml and an overlay preset
    project, preset = _overlay_project(tmp_path)
    before = (project / "params.yaml").read_text()

    # when the flow's params step runs with the preset and an override
    params = overrides.write_project_params(project, preset, {"train.lr": 0.001})

    # then params.yaml holds the preset and the override on its own keys, and only those lines changed
    after = (project / "params.yaml").read_text()
    assert load_params(project / "params.yaml") == params
    assert (params.train.steps, params.train.cd_k, params.train.lr) == (12, 3, 0.001)
    assert params.train.batch_size == 128 and params.train.log_every == TINY["train"]["log_every"]
    changed = [(old, new) for old, new in zip(before.splitlines(), after.splitlines(), strict=True) if old != new]
    assert sorted(new.split(":")[0].strip() for _, new in changed) == ["cd_k", "lr", "steps"], changed
    assert after.startswith("# my project\n") and "  seed: 0  # mine\n" in after, "the user's comments stay"

    # and the default run (params.yaml, no overrides) leaves the file alone: DVC sees no edit
    mtime = (project / "params.yaml").stat().st_mtime_ns
    assert overrides.write_project_params(project, "params.yaml", {}) == params
    assert (project / "params.yaml").read_text() == after
    assert (project / "params.yaml").stat().st_mtime_ns == mtime


def test_a_bad_key_in_a_preset_leaves_params_yaml_untouched(tmp_path: Path) -> None:
    project, _ = _overlay_project(tmp_path)
    before = (project / "params.yaml").read_bytes()
    (project / "presets" / "bad.yaml").write_text(yaml.safe_dump({"train": {"cd_kk": 3}}))
    with pytest.raises(CdganError, match=r"presets/bad\.yaml: train\.cd_kk"):
        overrides.write_project_params(project, "presets/bad.yaml", {})
    assert (project / "params.yaml").read_bytes() == before


def test_a_sweep_has_one_trial_per_combination_the_last_key_varying_fastest(tmp_path: Path) -> None:
    # given a grid of two keys on tiny params
    grid = {"train.loss": ["cd", "bce"], "train.seed": [0, 1]}

    # when its trials are expanded and validated
    trials = overrides.expand_grid(grid)
    params = overrides.sweep_params(tiny_raw(), grid)

    # then each combination is one trial, in that order, named by its values, with those values in its params
    assert trials == [
        {"train.loss": "cd", "train.seed": 0},
        {"train.loss": "cd", "train.seed": 1},
        {"train.loss": "bce", "train.seed": 0},
        {"train.loss": "bce", "train.seed": 1},
    ]
    assert [overrides.trial_name(t) for t in trials] == ["loss=cd,seed=0", "loss=cd,seed=1", "loss=bce,seed=0",
                                                          "loss=bce,seed=1"]  # fmt: skip
    assert [(p.train.loss, p.train.seed) for p in params] == [("cd", 0), ("cd", 1), ("bce", 0), ("bce", 1)]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"train.cd_k": [1, -1]}, r"sweep trial cd_k=-1: train\.cd_k"),
        ({"data.dataset": ["digits", "grid25"]}, r"all trials must share data\.dataset"),
    ],
)
def test_a_sweep_with_a_bad_trial_is_refused_naming_it(grid: dict, message: str) -> None:
    with pytest.raises(CdganError, match=message):
        overrides.sweep_params(tiny_raw(), grid)
