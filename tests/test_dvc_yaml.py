"""dvc.yaml against the code: every stage depends on exactly the cdgan modules its command imports."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO
from tests.imports import code_deps, entry_module, import_closure

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_the_closure_follows_function_level_and_package_imports() -> None:
    # given cli, which imports cdgan.stages inside a function, and stages, which imports the rest at the top
    closure = import_closure("cdgan.cli")

    # then the lazy import, the modules behind it and the package __init__ are all in; __main__ is not
    assert {"cdgan", "cdgan.cli", "cdgan.stages", "cdgan.train", "cdgan.registry", "cdgan.errors"} <= closure
    assert "cdgan.__main__" not in closure, "nothing the stages run imports __main__"
    assert import_closure("cdgan.errors") == {"cdgan", "cdgan.errors"}, "errors imports no cdgan module"


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
