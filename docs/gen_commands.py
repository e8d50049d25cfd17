"""The commands reference, generated from the Makefile and the `cdgan` typer app: an MkDocs hook and a script.

As a hook (mkdocs.yml `hooks:`) it replaces MAKE_MARKER with the Makefile's targets and their `##` help, and
CLI_MARKER with every `cdgan` subcommand, its help and its options. tests/test_docs.py checks the commands
written in the docs against the same two sources (`make_targets`, `cli_command`).
`python docs/gen_commands.py` prints both parts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import typer

from cdgan.cli import app

MAKE_MARKER = "<!-- make-reference -->"
CLI_MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[1]
_TARGET = re.compile(r"^([A-Za-z][\w.-]*):(?!=)[^#\n]*(?:##\s*(.*))?$", re.MULTILINE)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: the references in place of their markers; every other page unchanged."""
    if MAKE_MARKER in markdown:
        markdown = markdown.replace(MAKE_MARKER, render_make())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, render_cli())
    return markdown


def make_targets(makefile: Path = ROOT / "Makefile") -> dict[str, str]:
    """target -> its `##` help (empty where it has none), in the Makefile's order; file targets left out."""
    return {name: (help_ or "").strip() for name, help_ in _TARGET.findall(makefile.read_text()) if "/" not in name}


def cli_command() -> Any:
    """The click group behind `cdgan`, as the console script runs it (typer's own copy of click: read its
    commands and params by their attributes, not with isinstance against the click package)."""
    return typer.main.get_command(app)


def cli_commands(group: Any = None, prefix: str = "cdgan") -> dict[str, Any]:
    """ "cdgan train" -> its command, for every command that runs something, subgroups walked."""
    group = group or cli_command()
    out = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            out |= cli_commands(command, f"{prefix} {name}")
        else:
            out[f"{prefix} {name}"] = command
    return out


def options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def render_make() -> str:
    rows = [f"| `make {name}` | {_cell(help_)} |" for name, help_ in make_targets().items()]
    return "| target | what it does |\n|---|---|\n" + "\n".join(rows) + "\n"


def render_cli() -> str:
    out = []
    for name, command in cli_commands().items():
        out.append(f"### `{name}`\n\n{(command.help or '').strip()}\n")
        rows = [_option_row(p) for p in options(command)]
        if rows:
            out.append("| option | default | what it is |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return "\n".join(out)


def _option_row(option: Any) -> str:
    names = " / ".join(f"`{n}`" for n in [*option.opts, *option.secondary_opts])
    default = "required" if option.required else f"`{option.default}`" if option.default is not None else ""
    return f"| {names} | {default} | {_cell(option.help or '')} |"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


if __name__ == "__main__":
    sys.stdout.write(render_make() + "\n" + render_cli())
