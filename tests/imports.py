"""What the code imports, read with `ast`: the module closure behind each stage's dvc.yaml deps and the
model's serving requirements (shared by tests/test_dvc_yaml.py and tests/test_serving.py)."""

from __future__ import annotations

import ast
import shlex
import tomllib
from pathlib import Path

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
