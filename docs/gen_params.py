"""The params reference, generated from the pydantic models in cdgan.params: an MkDocs hook and a script.

As a hook (mkdocs.yml `hooks:`) it replaces MARKER in a page with one table per params.yaml section: each
key's type, schema default, bounds and the comment on its line in cdgan/params.py, the value params.yaml sets,
and the DVC stages that rerun when it changes (from dvc.yaml). The checks the validators make are listed
under each table, quoted from their error messages. `python docs/gen_params.py` prints the same Markdown.
"""

from __future__ import annotations

import ast
import inspect
import io
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel

from cdgan import params as params_module
from cdgan.params import Params

MARKER = "<!-- params-reference -->"
ROOT = Path(__file__).resolve().parents[1]
VALIDATORS = {"field_validator", "model_validator"}
BOUNDS = {
    annotated_types.Ge: (">=", "ge"),
    annotated_types.Gt: (">", "gt"),
    annotated_types.Le: ("<=", "le"),
    annotated_types.Lt: ("<", "lt"),
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: the reference in place of MARKER; every other page unchanged."""
    return markdown.replace(MARKER, render()) if MARKER in markdown else markdown


def render(params_yaml: Path = ROOT / "params.yaml", dvc_yaml: Path = ROOT / "dvc.yaml") -> str:
    """One Markdown section per params.yaml section, in the order of the root model `Params`."""
    values = yaml.safe_load(params_yaml.read_text()) or {}
    stage_params = {
        name: stage.get("params", []) for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items()
    }
    out = []
    for section, field in Params.model_fields.items():
        model = field.annotation
        out.append(f"## `{section}`\n")
        if model.__dict__.get("__doc__"):  # its own docstring, not BaseModel's
            out.append(f"{inspect.cleandoc(model.__doc__)}\n")
        out.append(
            "| key | type | default | bounds | params.yaml | reruns | what it does |\n|---|---|---|---|---|---|---|"
        )
        comments = _yaml_comments(params_yaml).get(section, {}) | _trailing_comments(model)
        for name, info in model.model_fields.items():
            key = f"{section}.{name}"
            set_to = (values.get(section) or {}).get(name, "")
            reruns = [stage for stage, keys in stage_params.items() if section in keys or key in keys]
            out.append(
                f"| `{key}` | {_type(info.annotation)} | {_value(info.default)} | {_bounds(info.metadata)} | "
                f"{_value(set_to) if name in (values.get(section) or {}) else ''} | {', '.join(reruns)} | "
                f"{_cell(info.description or comments.get(name, ''))} |"
            )
        checks = _checks(model)
        if checks:
            out.append("\nAlso checked:\n")
            out.extend(f"- {who}: {_cell(message)}" for who, message in checks)
        out.append("")
    return "\n".join(out)


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"list, each {_type(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("`null`" if a is type(None) else _type(a) for a in args)
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _value(value: Any) -> str:
    if isinstance(value, tuple | list):
        value = list(value)
    text = "null" if value is None else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
    return f"`{text.strip()}`"


def _bounds(metadata: list[Any]) -> str:
    parts = [f"{BOUNDS[type(m)][0]} {getattr(m, BOUNDS[type(m)][1])}" for m in metadata if type(m) in BOUNDS]
    parts += [f"length >= {m.min_length}" for m in metadata if isinstance(m, annotated_types.MinLen)]
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _trailing_comments(model: type[BaseModel]) -> dict[str, str]:
    """field name -> the comment ending the line (or the last line) of its definition in the class body."""
    source = inspect.getsource(model)
    comments = {
        tok.start[0]: tok.string.lstrip("# ").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    body = ast.parse(source).body[0].body
    return {
        node.target.id: comments[node.end_lineno]
        for node in body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.end_lineno in comments
    }


def _yaml_comments(path: Path) -> dict[str, dict[str, str]]:
    """section -> key -> the comment ending its line in params.yaml: the fallback where the code has none."""
    out: dict[str, dict[str, str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        text, _, comment = line.partition(" #")
        name = text.strip().partition(":")[0]
        if text and not text[0].isspace() and text.strip().endswith(":"):
            section = name
        elif section and comment and text.startswith(" ") and name and " | " not in comment:  # not a choice list
            out.setdefault(section, {})[name] = comment.strip()
    return out


def _checks(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(key or 'section', message) for each ValueError its validators raise, including module-level check
    functions attached with `field_validator("key")(function)`."""
    module_tree = ast.parse(inspect.getsource(params_module))
    functions = {node.name: node for node in module_tree.body if isinstance(node, ast.FunctionDef)}
    out = []
    for node in ast.parse(inspect.getsource(model)).body[0].body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") in VALIDATORS:
                    who = _validated_keys(decorator)
                    out += [(who, message) for message in _raised_messages(node)]
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            inner, (checker, *_) = node.value.func, node.value.args or [None]
            if isinstance(inner, ast.Call) and getattr(inner.func, "id", "") in VALIDATORS and checker is not None:
                function = functions.get(getattr(checker, "id", ""))
                if function is not None:
                    out += [(_validated_keys(inner), message) for message in _raised_messages(function)]
    return out


def _validated_keys(decorator: ast.Call) -> str:
    keys = [arg.value for arg in decorator.args if isinstance(arg, ast.Constant)]
    return ", ".join(f"`{k}`" for k in keys) if keys else "across keys"


def _raised_messages(function: ast.FunctionDef) -> list[str]:
    messages = []
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and getattr(node.exc.func, "id", "") == "ValueError"
        ):
            messages.append(_literal(node.exc.args[0]))
    return messages


def _literal(node: ast.expr) -> str:
    """A message's text: constants as written, module constants by value, other interpolations as `...`."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(_literal(part) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        name = getattr(node.value, "id", None)
        value = getattr(params_module, name, None) if name else None
        return str(value) if isinstance(value, str | int | float) else "..."
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _literal(node.left) + _literal(node.right)
    return "..."


if __name__ == "__main__":
    sys.stdout.write(render())
