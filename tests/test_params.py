"""Tests for cdgan.params: defaults, the repo's params.yaml, errors that name the dotted key, fixed paths."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from cdgan.errors import CdganError
from cdgan.params import DataParams, Params, Paths, TrainParams, load_params, parse_params

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


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


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
        ({"data": {"image_size": 12}}, "data.image_size"),  # not 4 * 2**n
        ({"data": {"image_size": 24}}, "data.image_size"),  # not 4 * 2**n
        ({"data": {"image_size": 2}}, "data.image_size"),  # below 4
        ({"train": {"beta1": 1.0}}, "train.beta1"),
        ({"register": {"model_name": ""}}, "register.model_name"),
    ],
)
def test_bad_value_raises_cdgan_error_naming_dotted_key(tmp_path: Path, raw: dict, key: str) -> None:
    # given a params file with one bad entry
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


@pytest.mark.parametrize("size", [4, 8, 16, 32, 64])
def test_image_size_accepts_powers_of_two_times_four(size: int) -> None:
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
