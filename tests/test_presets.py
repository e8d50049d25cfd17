"""Presets are overlays on params.yaml: each shipped one validates and holds only the keys it changes, and
`apply_preset` writes them into a params file, validated first, keeping the user's other keys and comments."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdgan.errors import CdganError
from cdgan.params import load_params
from cdgan.presets import apply_preset, load_preset, overlay_params, read_preset

REPO = Path(__file__).resolve().parents[1]
# every params preset in presets/, new ones included; tune-*.yaml are cdgan-tune search spaces, not params
PRESETS = sorted(p for p in (REPO / "presets").glob("*.yaml") if not p.name.startswith("tune-"))


def _leaves(raw: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _preset(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def params_yaml(tmp_path: Path) -> Path:
    """A copy of the repo's params.yaml, comments and all, as a user's project has it."""
    return Path(shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml"))


def test_the_shipped_presets_are_found() -> None:
    assert {"grid25.yaml", "ring8.yaml", "stacked-digits.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_on_params_yaml_validates_against_the_schema(preset: Path) -> None:
    # when the preset is put on the repo's params.yaml and validated (a CdganError would fail the test)
    params = load_preset(preset, REPO / "params.yaml")
    # then every key the preset sets is what the validated params hold
    loaded = _leaves(params.model_dump(mode="json"))
    for key, value in _leaves(yaml.safe_load(preset.read_text())).items():
        assert loaded[key] == value, f"{preset.name}: {key}"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_holds_only_keys_that_differ_from_params_yaml(preset: Path) -> None:
    # given the repo's params.yaml and the preset's keys
    base = _leaves(yaml.safe_load((REPO / "params.yaml").read_text()))
    overlay = _leaves(yaml.safe_load(preset.read_text()))
    # then none repeats params.yaml's value: a copy would hide a later change of the default
    redundant = sorted(key for key, value in overlay.items() if key in base and base[key] == value)
    assert not redundant, f"{preset.name} repeats params.yaml's values of {redundant}; drop them"


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_header_says_what_it_is_and_how_to_apply_it(preset: Path) -> None:
    text = preset.read_text()
    assert text.startswith("# "), f"{preset.name} opens with a comment saying what it is for"
    assert f"cdgan params apply presets/{preset.name}" in text, f"{preset.name} names the command that applies it"
    assert "cp presets/" not in text, f"{preset.name}: a preset is applied, never copied over params.yaml"


def test_overlay_merges_sections_key_by_key_and_changes_neither_input() -> None:
    # given
    base = {"data": {"dataset": "digits", "seed": 0}, "train": {"lr": 0.002, "steps": 6000}}
    overlay = {"train": {"steps": 3000}, "sample": {"langevin_steps": 100}}
    # when
    merged = overlay_params(base, overlay)
    # then the overlay's leaves replace base's, every other key stays, a new section comes in whole
    assert merged == {
        "data": {"dataset": "digits", "seed": 0},
        "train": {"lr": 0.002, "steps": 3000},
        "sample": {"langevin_steps": 100},
    }
    assert base["train"]["steps"] == 6000 and "sample" not in base


def test_overlay_replaces_lists_whole() -> None:
    merged = overlay_params(
        {"evaluate": {"metrics": ["fid", "kid", "precision_recall"]}}, {"evaluate": {"metrics": ["fid"]}}
    )
    assert merged == {"evaluate": {"metrics": ["fid"]}}


def test_apply_keeps_the_users_other_edits_and_comments(params_yaml: Path) -> None:
    # given a user's params.yaml with an edit the preset does not touch, and a comment of their own
    text = params_yaml.read_text()
    edited = text.replace("  batch_size: 64 ", "  batch_size: 128").replace("  seed: 0\n", "  seed: 0  # mine\n", 1)
    assert edited.count("batch_size: 128") == 1 and "# mine" in edited
    params_yaml.write_text(edited)
    expected = load_preset(REPO / "presets" / "grid25.yaml", params_yaml)

    # when the grid25 preset is applied
    applied = apply_preset(params_yaml, REPO / "presets" / "grid25.yaml")

    # then the file holds exactly the preset on the user's params, the edit and comments included,
    # and the only lines that changed are those of the changed keys
    assert load_params(params_yaml) == expected == applied.params
    assert applied.params.train.batch_size == 128 and applied.params.data.dataset == "grid25"
    before, after = edited.splitlines(), params_yaml.read_text().splitlines()
    assert len(before) == len(after), "no line added or dropped"
    changed_lines = {line.split(":")[0].strip() for old, line in zip(before, after, strict=True) if old != line}
    assert changed_lines == {change.key.split(".")[-1] for change in applied.changes}
    assert all(b.partition("#")[2] == a.partition("#")[2] for b, a in zip(before, after, strict=True)), "comments"


def test_apply_reports_each_changed_key_with_its_old_and_new_value(params_yaml: Path) -> None:
    # when grid25 is applied on the repo's params.yaml
    applied = apply_preset(params_yaml, REPO / "presets" / "grid25.yaml")
    # then every key of the preset is reported (none repeats params.yaml), with both values
    overlay = _leaves(yaml.safe_load((REPO / "presets" / "grid25.yaml").read_text()))
    base = _leaves(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert {c.key: (c.old, c.new) for c in applied.changes} == {k: (base[k], v) for k, v in overlay.items()}
    assert all(c.was_set for c in applied.changes)


def test_applying_twice_leaves_the_file_alone_the_second_time(params_yaml: Path) -> None:
    # given a params file the preset was applied to
    apply_preset(params_yaml, REPO / "presets" / "ring8.yaml")
    written, mtime = params_yaml.read_bytes(), params_yaml.stat().st_mtime_ns
    # when it is applied again
    applied = apply_preset(params_yaml, REPO / "presets" / "ring8.yaml")
    # then nothing changes and the file is not rewritten (DVC and make see no edit)
    assert applied.changes == ()
    assert params_yaml.read_bytes() == written and params_yaml.stat().st_mtime_ns == mtime


BAD_PRESETS = [
    ({"train": {"cd_kk": 3}}, "train.cd_kk"),
    ({"train": {"steps": "many"}}, "train.steps"),
    ({"trian": {"steps": 10}}, "trian"),
    ({"train": 5}, "train"),
    ({"data": {"dataset": "imagenet"}}, "data.dataset"),
    ({"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2}}, "train.lr"),  # a search space, not a preset
]


@pytest.mark.parametrize(("raw", "key"), BAD_PRESETS, ids=[key for _, key in BAD_PRESETS])
def test_bad_preset_names_the_key_and_leaves_params_yaml_byte_identical(
    raw: dict, key: str, params_yaml: Path, tmp_path: Path
) -> None:
    # given a user's params.yaml and a preset with one bad key
    before = params_yaml.read_bytes()
    preset = _preset(tmp_path, raw)
    # when it is applied
    with pytest.raises(CdganError) as error:
        apply_preset(params_yaml, preset)
    # then the error names the preset and the key, and the file is untouched with no temp file beside it
    assert str(error.value).startswith(f"{preset} on {params_yaml}: {key}"), error.value
    assert params_yaml.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "preset.yaml"]


def test_missing_preset_names_the_path(params_yaml: Path, tmp_path: Path) -> None:
    with pytest.raises(CdganError, match=r"nope\.yaml: preset not found"):
        apply_preset(params_yaml, tmp_path / "nope.yaml")


def test_keys_the_file_lacks_go_into_their_sections(tmp_path: Path) -> None:
    # given a params file without train.lr_decay and without a sample section
    params_yaml = tmp_path / "params.yaml"
    params_yaml.write_text("data:\n  dataset: digits  # images\n\ntrain:\n  lr: 0.002\n  beta1: 0.0\n")
    # when grid25 is applied
    applied = apply_preset(params_yaml, REPO / "presets" / "grid25.yaml")
    # then the new keys are in their sections, after the keys the schema puts before them, and reported as new
    raw = yaml.safe_load(params_yaml.read_text())
    assert list(raw["train"])[:4] == ["cd_k", "real_gp", "steps", "n_critic"]
    assert list(raw["train"])[4:7] == ["lr", "lr_decay", "beta1"]
    assert raw["sample"] == {"langevin_steps": 100, "temperature": 0.005}
    assert "# images" in params_yaml.read_text()
    assert load_params(params_yaml) == applied.params == load_preset(REPO / "presets" / "grid25.yaml", params_yaml)
    assert not {c.key: c for c in applied.changes}["sample.temperature"].was_set


def test_written_values_read_back_as_the_same_types(params_yaml: Path, tmp_path: Path) -> None:
    # given a preset with a small float (PyYAML reads 1e-05, with no dot, as a string), null and a list
    preset = _preset(tmp_path, {"train": {"lr": 1.0e-5, "lr_e": 3.0e-4}, "evaluate": {"metrics": ["fid"]}})
    apply_preset(params_yaml, preset)
    # when a preset puts lr_e back to null
    apply_preset(params_yaml, _preset(tmp_path, {"train": {"lr_e": None}}))
    # then load_params reads them as written
    params = load_params(params_yaml)
    assert params.train.lr == 1e-5 and params.train.lr_e is None and params.evaluate.metrics == ("fid",)
    assert "  lr_e: null\n" in params_yaml.read_text() and "metrics: [fid]" in params_yaml.read_text()


def test_read_preset_is_the_raw_params_with_the_preset_on_top(params_yaml: Path) -> None:
    raw = read_preset(REPO / "presets" / "stacked-digits.yaml", params_yaml)
    assert raw["data"]["dataset"] == "stacked-digits" and raw["evaluate"]["metrics"] == ["fid", "kid"]
    assert raw["train"]["beta2"] == yaml.safe_load(params_yaml.read_text())["train"]["beta2"]
