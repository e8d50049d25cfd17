"""dvc.yaml against the code: every stage depends on exactly the cdgan modules its command imports."""

from __future__ import annotations

import ast
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = "cdgan"


def module_file(module: str) -> Path | None:
    """The source file of a cdgan module or package, None if `module` names neither (a class, a function)."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under `if TYPE_CHECKING:`: they never run, so they cannot change an output."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(inner for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def direct_imports(module: str) -> set[str]:
    """cdgan modules `module` imports anywhere in its source (function-level imports too), with their packages."""
    path = module_file(module)
    assert path is not None, f"{module}: no source file under {SRC}"
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from .files import y
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}"))
    ours = {name for name in found if name == PACKAGE or name.startswith(f"{PACKAGE}.")}
    # importing a.b.c runs a/__init__.py and a/b/__init__.py first
    with_parents = {".".join(name.split(".")[:i]) for name in ours for i in range(1, name.count(".") + 2)}
    return {name for name in with_parents if module_file(name)}


def import_closure(entry: str) -> set[str]:
    """`entry` and every cdgan module it imports, directly or not."""
    seen: set[str] = set()
    todo = [entry, *(".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1))]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(direct_imports(module) - seen)
    return seen


def entry_module(cmd: str) -> str | None:
    """The module a stage command starts in: a console script from pyproject.toml, or `python -m module`."""
    words = shlex.split(cmd)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("scripts", {})
    if words[0] in scripts:
        return scripts[words[0]].split(":")[0]
    if words[0].startswith("python") and words[1:2] == ["-m"]:
        module = words[2]
        return f"{module}.__main__" if module_file(module) and module_file(module).name == "__init__.py" else module
    return None


def code_deps(module_names: set[str]) -> set[str]:
    return {str(module_file(name).relative_to(REPO)) for name in module_names}


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
    declared = {dep for dep in STAGES[stage].get("deps", []) if dep.startswith("src/")}

    # then they are the same files: a missing one would let `dvc repro` skip a stage whose code changed
    missing, extra = sorted(expected - declared), sorted(declared - expected)
    assert not missing and not extra, f"dvc.yaml: {stage}: add deps {missing}, remove deps {extra}"


def test_every_code_dep_exists() -> None:
    for name, stage in STAGES.items():
        for dep in stage.get("deps", []):
            if dep.startswith("src/"):
                assert (REPO / dep).is_file(), f"dvc.yaml: {name}: dep {dep} does not exist"
