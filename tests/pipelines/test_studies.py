"""The Optuna side of cdgan-tune (pipelines/studies.py) on in-memory studies; the flow's tests are in test_tune.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cdgan.errors import CdganError
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


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        (None, "sqlite:///{project}/sweeps/optuna.db"),
        ("journal:sweeps/optuna.log", "journal:{project}/sweeps/optuna.log"),
        ("journal:{tmp}/elsewhere/optuna.log", "journal:{tmp}/elsewhere/optuna.log"),
        ("sqlite:///{tmp}/optuna.db", "sqlite:///{tmp}/optuna.db"),
        ("postgresql://cdgan@127.0.0.1:5432/optuna", "postgresql://cdgan@127.0.0.1:5432/optuna"),
    ],
)
def test_each_storage_form_resolves_and_a_study_in_it_reopens(
    tmp_path: Path, storage: str | None, expected: str
) -> None:
    # given a project folder and a storage string in one of the accepted forms
    project = tmp_path / "project"
    project.mkdir()
    given = None if storage is None else storage.format(tmp=tmp_path)
    # when it is resolved, then a relative journal path is under the project, and the rest is kept as given
    resolved = studies.resolve_storage(given, project)
    assert resolved == expected.format(project=project, tmp=tmp_path)
    if resolved.startswith("postgresql:"):
        return  # the URL's form and driver are checked; opening it needs a server (tests/pipelines/test_multinode.py)
    # and a study written through `open_storage` is read back from a second opening of the same string
    study = optuna.create_study(study_name="s", storage=studies.open_storage(resolved))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    again = optuna.load_study(study_name="s", storage=studies.open_storage(resolved))
    assert [t.state for t in again.get_trials()] == [TrialState.COMPLETE, TrialState.COMPLETE]
    if resolved.startswith(studies.JOURNAL_PREFIX):
        assert Path(resolved.removeprefix(studies.JOURNAL_PREFIX)).stat().st_size > 0, "the journal file holds them"


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("journal:", r"expected journal:PATH"),
        ("journal:.", r"is a directory; journal:PATH names a file"),
        ("sweeps/optuna.db", r"expected journal:PATH .* or an RDB URL .*Could not parse"),
        ("bogus://host/db", r"expected journal:PATH .* or an RDB URL .*sqlalchemy\.dialects:bogus"),
        ("mysql://host/db", r"the mysql driver MySQLdb is not installed"),
    ],
)
def test_a_bad_storage_is_one_error_naming_the_forms(tmp_path: Path, storage: str, message: str) -> None:
    with pytest.raises(CdganError, match=message) as error:
        studies.resolve_storage(storage, tmp_path)
    assert str(error.value).startswith(f"--storage {storage!r}: ") and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == [], "nothing is made for a storage that is refused"
