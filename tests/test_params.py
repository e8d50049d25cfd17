"""Tests for cdgan.params: defaults, the repo's params.yaml, errors that name the dotted key, fixed paths."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from cdgan import cli
from cdgan.errors import CdganError
from cdgan.params import (
    ALLOW_EXTERNAL_PATHS_ENV,
    DataParams,
    EvaluateParams,
    Params,
    Paths,
    TrainParams,
    load_params,
    parse_params,
)

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_defaults_validate() -> None:
    # given / when: every section from its defaults, round-tripped through validation
    params = parse_params(Params().model_dump())
    # then
    assert params == Params()
    assert params.train.loss == "cd" and params.data.dataset == "digits" and params.register.model_name == "cdgan"


def test_repo_params_yaml_loads() -> None:
    # when
    params = load_params(REPO / "params.yaml")
    # then every section of the file is read, not defaulted: compare with the raw YAML
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Params.model_fields), "params.yaml has exactly the sections Params declares"
    for section, values in raw.items():
        loaded = getattr(params, section).model_dump()
        assert {key: loaded[key] for key in values} == values, f"section {section} differs from params.yaml"


def test_empty_file_is_refused(tmp_path: Path) -> None:
    # the code's defaults differ from the shipped params.yaml: an emptied file must not train them silently
    path = tmp_path / "params.yaml"
    path.write_text("")
    with pytest.raises(CdganError, match=r"params\.yaml: empty"):
        load_params(path)


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(pydantic.ValidationError):
        params.train.cd_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"cd_kk": 3}}, "train.cd_kk"),  # unknown key in a section
        ({"trian": {"cd_k": 3}}, "trian"),  # unknown section
        ({"train": {"cd_k": -1}}, "train.cd_k"),  # bound
        ({"train": {"steps": "many"}}, "train.steps"),  # wrong type
        ({"model": {"spectral_norm": "maybe"}}, "model.spectral_norm"),  # wrong type
        ({"train": {"lr": [0.1]}}, "train.lr"),  # wrong type
        ({"data": {"dataset": "imagenet"}}, "data.dataset"),  # not a choice
        ({"train": {"loss": "wgan"}}, "train.loss"),  # not a choice
        ({"data": {"image_size": 12}}, "data.image_size"),  # not 4 * 2**n nor 7 * 2**n
        ({"data": {"image_size": 24}}, "data.image_size"),  # not 4 * 2**n nor 7 * 2**n
        ({"data": {"image_size": 21}}, "data.image_size"),  # odd: 7 * 3
        ({"data": {"image_size": 2}}, "data.image_size"),  # below 4
        ({"train": {"beta1": 1.0}}, "train.beta1"),
        ({"register": {"model_name": ""}}, "register.model_name"),
        ({"data": {"root": "/mnt/datasets/mnist"}}, "data.root"),  # absolute: outside the project
        ({"data": {"root": "../shared/raw"}}, "data.root"),  # `..` leaves the project
        ({"data": {"root": "data/../../raw"}}, "data.root"),  # leaves it after normalising
        ({"evaluate": {"inception_weights": "/opt/pt_inception.pth"}}, "evaluate.inception_weights"),
        ({"evaluate": {"inception_weights": ".."}}, "evaluate.inception_weights"),
    ],
)
def test_bad_value_raises_cdgan_error_naming_dotted_key(
    tmp_path: Path, raw: dict, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a params file with one bad entry (and no opt-in to paths outside the project)
    monkeypatch.delenv(ALLOW_EXTERNAL_PATHS_ENV, raising=False)
    path = _write(tmp_path, raw)
    # when / then
    with pytest.raises(CdganError) as err:
        load_params(path)
    assert f"{key}:" in str(err.value), f"message does not name {key}: {err.value}"
    assert str(path) in str(err.value), f"message does not name the file: {err.value}"


def test_every_bad_key_is_listed_in_one_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"train": {"cd_k": -1, "steps": 0}, "data": {"dataset": "nope"}})
    with pytest.raises(CdganError) as err:
        load_params(path)
    for key in ("train.cd_k", "train.steps", "data.dataset"):
        assert key in str(err.value), f"{key} missing from: {err.value}"


@pytest.mark.parametrize("size", [4, 8, 16, 32, 64, 7, 14, 28, 56])
def test_image_size_accepts_powers_of_two_times_four_or_seven(size: int) -> None:
    assert DataParams(image_size=size).image_size == size


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(CdganError, match="not found") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_invalid_yaml_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("train: {cd_k: [1, 2\n")
    with pytest.raises(CdganError, match="not valid YAML") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_yaml_that_is_not_a_mapping_names_the_path(tmp_path: Path) -> None:
    path = _write(tmp_path, ["data", "train"])
    with pytest.raises(CdganError, match="mapping") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_is_image_follows_dataset() -> None:
    assert DataParams(dataset="digits").is_image and DataParams(dataset="stacked-digits").is_image
    assert not DataParams(dataset="grid25").is_image and not DataParams(dataset="ring8").is_image


def test_train_params_yaml_keys_are_field_names() -> None:
    # one name everywhere: the YAML key is the field name (no aliases)
    assert all(field.alias is None for field in TrainParams.model_fields.values())


def test_paths_are_fixed_under_root(tmp_path: Path) -> None:
    # given
    paths = Paths(tmp_path)
    # then each output has its documented place
    expected = {
        "prepared": "data/prepared",
        "dataset": "data/prepared/dataset.npz",
        "classifier": "data/prepared/classifier.pt",
        "models": "models",
        "generator": "models/generator.pt",
        "energy": "models/energy.pt",
        "checkpoint": "models/checkpoint.pt",
        "metrics": "metrics",
        "train_metrics": "metrics/train.json",
        "eval_metrics": "metrics/eval.json",
        "register_metrics": "metrics/register.json",
        "train_plots": "plots/train",
        "eval_plots": "plots/eval",
        "mlruns": "mlruns",
    }
    for name, relative in expected.items():
        assert getattr(paths, name) == tmp_path / relative, f"Paths.{name}"


def test_paths_default_root_is_the_working_directory() -> None:
    assert Paths().generator == Path("models/generator.pt")


def test_params_yaml_lists_every_knob_so_it_documents_them_all() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    missing = {s: sorted(set(getattr(params, s).model_dump()) - set(raw[s])) for s in raw}
    assert not any(missing.values()), f"keys with a default but no line in params.yaml: {missing}"


PATH_KEYS = [("data", "root"), ("evaluate", "inception_weights")]  # every path-valued param


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
def test_outside_path_error_names_the_key_the_value_and_both_fixes(
    tmp_path: Path, section: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a params file pointing a path param outside the project
    monkeypatch.delenv(ALLOW_EXTERNAL_PATHS_ENV, raising=False)
    path = _write(tmp_path, {section: {key: "/elsewhere/file"}})
    # when
    with pytest.raises(CdganError) as err:
        load_params(path)
    # then one message names the key, the value, and how to fix it either way
    message = str(err.value)
    assert f"{section}.{key}:" in message and "'/elsewhere/file'" in message, message
    assert "inside the project directory" in message and f"{ALLOW_EXTERNAL_PATHS_ENV}=1" in message, message


@pytest.mark.parametrize("value", ["data/raw", "data/../data/raw", "./data/raw", ".", "raw/..x/file"])
@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
def test_relative_paths_inside_the_project_are_accepted(
    tmp_path: Path, section: str, key: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_EXTERNAL_PATHS_ENV, raising=False)
    params = load_params(_write(tmp_path, {section: {key: value}}))
    assert getattr(getattr(params, section), key) == value, "accepted values are kept as written"


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
def test_external_paths_need_the_explicit_opt_in(
    tmp_path: Path, section: str, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, {section: {key: "/mnt/shared/file"}})
    # given the opt-in set to something other than 1: still refused
    monkeypatch.setenv(ALLOW_EXTERNAL_PATHS_ENV, "true")
    with pytest.raises(CdganError, match=f"{section}.{key}:"):
        load_params(path)
    # when the user sets it to 1, the same file loads
    monkeypatch.setenv(ALLOW_EXTERNAL_PATHS_ENV, "1")
    assert getattr(getattr(load_params(path), section), key) == "/mnt/shared/file"
    # and the argument overrides the environment both ways
    with pytest.raises(CdganError, match=f"{section}.{key}:"):
        parse_params({section: {key: "/mnt/shared/file"}}, allow_external_paths=False)
    monkeypatch.delenv(ALLOW_EXTERNAL_PATHS_ENV)
    assert parse_params({section: {key: "../up"}}, allow_external_paths=True)


def test_sections_built_in_code_take_any_path() -> None:
    # the check is at the edge (params files); code that builds sections itself, like tests, is trusted
    assert DataParams(root="/tmp/anywhere").root == "/tmp/anywhere"
    assert EvaluateParams(inception_weights="../w.pth").inception_weights == "../w.pth"


def test_outside_data_root_stops_the_cli_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a project whose params.yaml reads its images from outside it
    monkeypatch.delenv(ALLOW_EXTERNAL_PATHS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"data": {"dataset": "folder", "root": str(tmp_path.parent)}})
    # when `cdgan prepare` runs
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare"])
    # then it exits 1 with one line naming the key, and writes nothing
    error = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert error.startswith("cdgan: error: params.yaml: data.root:") and error.count("\n") == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
