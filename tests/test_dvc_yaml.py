"""dvc.yaml against the code: every stage depends on exactly the cdgan modules its command imports, and its
command, the stage's own module, imports only the code that stage runs."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.conftest import REPO, run
from tests.imports import code_deps, entry_module, import_closure

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# what each stage's module must not reach, directly or not: the CLI, the other stages' modules, and the code of
# steps it does not run (prepare logs nothing to MLflow and samples nothing; only register reaches the model
# registry; only evaluate and register the metric suite)
NOT_RUN = {
    "prepare": {"cdgan.tracking", "cdgan.store", "cdgan.registry", "cdgan.train", "cdgan.pictures", "cdgan.report"}
    | {"cdgan.evaluation", "cdgan.sampler", "cdgan.losses", "cdgan.models"},  # it saves the FID reference, no more
    "train": {"cdgan.registry", "cdgan.probe", "cdgan.evaluation"},  # scores via cdgan.reference
    "evaluate": {"cdgan.registry", "cdgan.train", "cdgan.report", "cdgan.probe"},
    "register": {"cdgan.train", "cdgan.pictures", "cdgan.report", "cdgan.probe"},
}


def test_the_closure_follows_function_level_and_package_imports() -> None:
    # given cli, which imports each stage module inside its command, and the stage modules, which import the core
    closure = import_closure("cdgan.cli")

    # then the lazy imports, the modules behind them and the package __init__ files are all in; __main__ is not
    assert {"cdgan", "cdgan.cli", "cdgan.stages", "cdgan.stages.train", "cdgan.train", "cdgan.registry"} <= closure
    assert "cdgan.__main__" not in closure, "nothing the stages run imports __main__"
    assert import_closure("cdgan.errors") == {"cdgan", "cdgan.errors"}, "errors imports no cdgan module"


@pytest.mark.parametrize(
    ("cmd", "module"),
    [
        ("python -m cdgan.stages.train", "cdgan.stages.train"),
        ("python -m cdgan.stages.evaluate --params other.yaml", "cdgan.stages.evaluate"),
        ("python -m cdgan train", "cdgan.__main__"),
        ("cdgan train", "cdgan.cli"),
    ],
)
def test_entry_module_reads_a_module_run_and_a_console_script(cmd: str, module: str) -> None:
    assert entry_module(cmd) == module


@pytest.mark.parametrize("stage", list(NOT_RUN))
def test_a_stage_imports_neither_the_cli_nor_the_code_of_steps_it_does_not_run(stage: str) -> None:
    # given the modules the stage's own module imports, directly or not
    closure = import_closure(f"cdgan.stages.{stage}")

    # then none of the CLI, the other stages or the steps it does not run: an edit there leaves it up to date
    others = {f"cdgan.stages.{name}" for name in NOT_RUN if name != stage} | {"cdgan.stages.registered"}
    unexpected = sorted(closure & (NOT_RUN[stage] | others | {"cdgan.cli"}))
    assert not unexpected, f"cdgan.stages.{stage} imports {unexpected}, so their edits would rerun {stage}"


def test_what_a_stage_module_loads_at_run_time_is_in_its_derived_closure() -> None:
    # given a fresh interpreter that imports the prepare stage's module, as `python -m` does before main runs
    code = "import json, sys, cdgan.stages.prepare; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(run([sys.executable, "-c", code], REPO).stdout))

    # then every cdgan module it loaded is one the ast walk found (the walk misses no import that runs), and
    # MLflow, which prepare does not use, was never imported
    ours = {name for name in loaded if name == "cdgan" or name.startswith("cdgan.")}
    assert ours <= import_closure("cdgan.stages.prepare"), sorted(ours - import_closure("cdgan.stages.prepare"))
    assert "mlflow" not in loaded, "prepare loads MLflow: some module in its closure imports it"


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_depends_on_exactly_the_modules_its_command_imports(stage: str) -> None:
    # given the stage's command and the modules it imports, derived from the source
    entry = entry_module(STAGES[stage]["cmd"])
    assert entry is not None, f"dvc.yaml: {stage}: cannot tell which code `{STAGES[stage]['cmd']}` runs"
    expected = code_deps(import_closure(entry))

    # when the stage's code deps are read from dvc.yaml
    declared = {dep for dep in STAGES[stage].get("deps", []) if dep.startswith("src/") and dep.endswith(".py")}

    # then they are the same files: a missing one would let `dvc repro` skip a stage whose code changed
    missing, extra = sorted(expected - declared), sorted(declared - expected)
    assert not missing and not extra, f"dvc.yaml: {stage}: add deps {missing}, remove deps {extra}"


def test_every_code_dep_exists() -> None:
    for name, stage in STAGES.items():
        for dep in stage.get("deps", []):
            if dep.startswith("src/"):
                assert (REPO / dep).is_file(), f"dvc.yaml: {name}: dep {dep} does not exist"


def test_prepare_depends_on_the_embedded_mnist_file() -> None:
    # the one data file inside the package that a stage reads: a rebuilt file must rerun prepare
    from cdgan import mnist10k

    dep = mnist10k.PATH.relative_to(REPO).as_posix()
    assert dep in STAGES["prepare"]["deps"], f"dvc.yaml: prepare: add dep {dep}"
    assert all(dep not in stage.get("deps", []) for name, stage in STAGES.items() if name != "prepare")


def test_the_committed_dvc_lock_was_made_from_the_committed_params() -> None:
    # given the committed params.yaml and dvc.lock (metrics/ and plots/ beside them come from the same run)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]

    def value(dotted: str) -> object:
        node = params
        for part in dotted.split("."):
            node = node[part]
        return node

    # then every param each stage recorded equals params.yaml's: rerun `make run` and commit its outputs if not
    stale = {
        f"{stage}: {key}"
        for stage, entry in lock.items()
        for key, recorded in entry.get("params", {}).get("params.yaml", {}).items()
        if recorded != value(key)
    }
    assert not stale, f"dvc.lock was made from other params: {sorted(stale)}; run `make run` and commit dvc.lock"
    # and from the stage's params as dvc.yaml declares them now
    for stage, entry in lock.items():
        recorded = set(entry.get("params", {}).get("params.yaml", {}))
        assert recorded == set(STAGES[stage].get("params", [])), f"dvc.lock: {stage}: run `make run`, commit dvc.lock"
