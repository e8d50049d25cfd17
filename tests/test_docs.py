"""The docs say what the code does: every command in the README's, RESULTS.md's and the docs' code names a real
make target, `cdgan` subcommand, console script, script, DVC command and flag; every params key they name exists;
their relative links resolve. (`make docs` builds the site with --strict, which checks the links between its own
pages.)"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
import yaml
from dvc.cli.parser import get_main_parser

from cdgan.params import Params
from pipelines import cli as pipelines_cli
from tests.conftest import REPO

DOCS = [REPO / "README.md", REPO / "RESULTS.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}  # fenced blocks read as commands; python, yaml, text are not
FLOW_SCRIPTS = {  # the console scripts of the pipelines package and their typer apps
    "cdgan-pipeline": pipelines_cli.pipeline_app,
    "cdgan-sweep": pipelines_cli.sweep_app,
    "cdgan-tune": pipelines_cli.tune_app,
}
PROGRAMS = {"make", "cdgan", "dvc", "python", "torchrun", "prefect", *FLOW_SCRIPTS}
SECTIONS = "|".join(Params.model_fields)
# a dotted params key: `train.cd_k`, not `cdgan.train`, `tests/test_train.py` or `metrics/train.json`
PARAM_KEY = re.compile(rf"(?<![\w./-])({SECTIONS})\.([a-z_][a-z0-9_]*)\b")
FILE_SUFFIXES = {"py", "json", "csv", "yaml", "yml", "md", "png", "pt", "npz", "npy", "html", "log", "txt"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_commands = _load(REPO / "docs" / "gen_commands.py")
gen_params = _load(REPO / "docs" / "gen_params.py")


def _split_fences(text: str) -> Iterator[tuple[str | None, str]]:
    """(fence language, body) for each fenced block, and (None, text) for the prose between them."""
    parts = re.split(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", text, flags=re.MULTILINE | re.DOTALL)
    yield None, parts[0]
    for i in range(1, len(parts), 3):
        yield parts[i].lower(), parts[i + 1]
        yield None, parts[i + 2]


def _command_lines(path: Path) -> Iterator[str]:
    """Each shell line of the file's shell blocks (continuations joined) and each inline code span that starts
    with a program this project documents."""
    for language, body in _split_fences(path.read_text()):
        if language is None:
            for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", body):
                if span.split(" ", 1)[0] in PROGRAMS or span.startswith("OMP_NUM_THREADS="):
                    yield span
        elif language in SHELL_FENCES:
            yield from body.replace("\\\n", " ").splitlines()


def _commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line (split at &&, ||, ;, |), comments and leading VAR=value dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: an inline span cut short, not a command
        return
    command: list[str] = []
    for token in [*tokens, ";"]:
        if set(token) <= set(";&|"):
            while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", command[0]):
                command.pop(0)
            if command and command[0] in PROGRAMS:
                yield command
            command = []
        else:
            command.append(token)


def documented_commands() -> list[tuple[str, list[str]]]:
    return [
        (f"{path.relative_to(REPO)}: {line.strip()}", command)
        for path in DOCS
        for line in _command_lines(path)
        for command in _commands(line)
    ]


def _is_placeholder(token: str) -> bool:
    return any(mark in token for mark in "<>*") or token in {"...", "N", "KEY=VALUE"}


def _argparse_flags(script: Path) -> set[str]:
    """The option strings a script's argparse parser declares (`add_argument("--x", ...)`), read with ast."""
    flags = {"-h", "--help"}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags


def _check_cdgan(args: list[str]) -> str | None:
    return _check_click(gen_commands.cli_command(), "cdgan", args)


def _check_click(command: Any, program: str, args: list[str]) -> str | None:
    """Why `program args` names a subcommand or option that the click command (or group) lacks, or None."""
    words = [program]
    rest = list(args)
    while hasattr(command, "commands"):
        if not rest or rest[0] in {"--help", "-h"}:
            return None  # `cdgan`, `cdgan params --help`: the group's own help
        name = rest.pop(0)
        if name not in command.commands:
            return f"`{' '.join(words)}` has no subcommand {name!r} (it has {sorted(command.commands)})"
        command, words = command.commands[name], [*words, name]
    known = {"--help"} | {o for p in gen_commands.options(command) for o in [*p.opts, *p.secondary_opts]}
    unknown = [t.split("=")[0] for t in rest if t.startswith("-") and t.split("=")[0] not in known]
    return f"`{' '.join(words)}` has no option {unknown} (it has {sorted(known)})" if unknown else None


def _check_argparse(parser: argparse.ArgumentParser, args: list[str], words: list[str]) -> str | None:
    rest = list(args)
    while True:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or not rest or rest[0].startswith("-"):
            break
        name = rest.pop(0)
        if name not in subparsers[0].choices:
            return f"`{' '.join(words)}` has no subcommand {name!r}"
        parser, words = subparsers[0].choices[name], [*words, name]
    known = set(parser._option_string_actions)
    unknown = [t.split("=")[0] for t in rest if re.match(r"--?[A-Za-z]", t) and t.split("=")[0] not in known]
    return f"`{' '.join(words)}` has no option {unknown}" if unknown else None


def _check_script(script: Path, args: list[str]) -> str | None:
    if not script.is_file():
        return f"{script.relative_to(REPO)} does not exist"
    flags = _argparse_flags(script)
    unknown = [t.split("=")[0] for t in args if t.startswith("--") and t.split("=")[0] not in flags]
    return f"{script.relative_to(REPO)} has no option {unknown} (it has {sorted(flags)})" if unknown else None


def _deployments() -> set[str]:
    """`<flow name>/<deployment name>` of each deployment in prefect.yaml, the flow's name read from its source."""
    out = set()
    for deployment in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]:
        module, _, function = deployment["entrypoint"].rpartition(".")  # a module path: pipelines.flows.cdgan_sweep
        for node in ast.walk(ast.parse(REPO.joinpath(*module.split(".")).with_suffix(".py").read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == function:
                keywords = [k for d in node.decorator_list for k in getattr(d, "keywords", [])]
                out |= {f"{k.value.value}/{deployment['name']}" for k in keywords if k.arg == "name"}
    return out


def check_command(command: list[str]) -> str | None:
    """Why the command names something that does not exist, or None."""
    program, args = command[0], command[1:]
    if program == "make":
        targets = gen_commands.make_targets()
        missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in targets]
        return f"the Makefile has no target {missing}" if missing else None
    if program == "cdgan":
        return _check_cdgan(args)
    if program in FLOW_SCRIPTS:
        return _check_click(typer.main.get_command(FLOW_SCRIPTS[program]), program, args)
    if program == "torchrun" and args:  # `torchrun` alone is a name in prose
        return _check_cdgan(args[args.index("cdgan") + 1 :]) if "cdgan" in args else "torchrun without -m cdgan"
    if program == "dvc":
        return _check_argparse(get_main_parser(), args, ["dvc"])
    if program == "prefect":
        named = args[2:3] if args[:2] == ["deployment", "run"] else []  # prefect deployment run FLOW/NAME
        missing = [n for n in named if n not in _deployments()]
        return f"prefect.yaml has no deployment {missing} (it has {sorted(_deployments())})" if missing else None
    if args[:1] == ["-m"] and len(args) > 1:  # python -m package.module
        if args[1] == "cdgan":
            return _check_cdgan(args[2:])
        return _check_script(REPO.joinpath(*args[1].split(".")).with_suffix(".py"), args[2:])
    if args and args[0].endswith(".py"):
        return _check_script(REPO / args[0], args[1:])
    return None  # python alone, python -c ..., prefect's other commands


def test_the_docs_show_commands_of_every_kind() -> None:
    # given the commands in the docs; then the check below reads some of each kind (a broken parser reads none)
    programs = {command[0] for _, command in documented_commands()}
    assert {"make", "cdgan", "dvc", "python", *FLOW_SCRIPTS} <= programs, programs


def test_every_console_script_is_checked() -> None:
    # given the console scripts pyproject.toml installs; then the check above knows each of them
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"cdgan", *FLOW_SCRIPTS}, scripts
    assert all(scripts[name] == f"pipelines.cli:{name.removeprefix('cdgan-')}_main" for name in FLOW_SCRIPTS)


@pytest.mark.parametrize(("where", "command"), documented_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_documented_command_exists(where: str, command: list[str]) -> None:
    # when the command's program, subcommand, target, script and flags are looked up in the code
    problem = check_command([t for t in command if not _is_placeholder(t)])
    # then each exists
    assert problem is None, f"{where}: {problem}"


@pytest.mark.parametrize(
    "command",
    [
        ["cdgan", "tarin"],
        ["cdgan", "sample", "--count", "4"],
        ["cdgan", "params", "aply", "presets/grid25.yaml"],
        ["make", "docs-server"],
        ["dvc", "exp", "runn"],
        ["dvc", "exp", "show", "--sort", "fid"],
        ["cdgan-sweep", "--grids", "train.seed=0,1"],
        ["cdgan-tune", "--trails", "3"],
        ["cdgan-pipeline", "--grid", "train.seed=0,1"],
        ["python", "pipelines/flows.py", "--grid", "train.seed=0,1"],
        ["python", "pipelines/sweep.py"],
        ["python", "-m", "benchmarks.fid_noise", "--samples", "2000"],
        ["prefect", "deployment", "run", "cdgan-pipeline/hourly"],
    ],
    ids=" ".join,
)
def test_a_command_that_does_not_exist_is_caught(command: list[str]) -> None:
    # given a misspelt subcommand, target, script or flag; then the check names it
    assert check_command(command) is not None, command


def test_every_params_key_named_in_the_docs_exists() -> None:
    # given every dotted key the docs name outside Python blocks (train.cd_k, -S train.seed=1, data.root/<class>)
    named = set()
    for path in DOCS:
        for language, body in _split_fences(path.read_text()):
            if language != "python":
                named |= {
                    (path.relative_to(REPO), section, name)
                    for section, name in PARAM_KEY.findall(body)
                    if name not in FILE_SUFFIXES
                }
    # then each is a field of its section's pydantic model
    unknown = {
        (str(where), f"{section}.{name}")
        for where, section, name in named
        if name not in Params.model_fields[section].annotation.model_fields
    }
    assert len(named) > 20, "the scan found almost no keys: is PARAM_KEY still right?"
    assert not unknown, f"keys the params models do not have: {sorted(unknown)}"


@pytest.mark.parametrize("path", [REPO / "README.md", REPO / "RESULTS.md", REPO / "reports" / "README.md"], ids=str)
def test_relative_links_outside_the_site_resolve(path: Path) -> None:
    # given the Markdown files GitHub renders but the docs site does not build (the site's own links: --strict)
    links = [link.split("#")[0] for link in LINK.findall(path.read_text()) if not re.match(r"\w+:", link)]
    # then each relative link points at a file of the repository
    missing = [link for link in links if link and not (path.parent / link).exists()]
    assert not missing, f"{path.relative_to(REPO)}: broken links {missing}"


def test_the_params_reference_has_every_key_with_its_default() -> None:
    # when the reference page is generated as the docs build does
    page = gen_params.on_page_markdown(f"# Params\n\n{gen_params.MARKER}\n")
    # then every section's every field is a row, with its schema default
    for section, field in Params.model_fields.items():
        for name, info in field.annotation.model_fields.items():
            row = next((line for line in page.splitlines() if line.startswith(f"| `{section}.{name}` |")), None)
            assert row is not None, f"{section}.{name} missing from the params reference"
            assert gen_params._value(info.default) in row, row
    assert gen_params.MARKER not in page


def test_the_commands_reference_has_every_make_target_and_cdgan_command() -> None:
    # when the reference page is generated as the docs build does
    page = gen_commands.on_page_markdown(f"{gen_commands.MAKE_MARKER}\n{gen_commands.CLI_MARKER}\n")
    # then it names every target and every command
    assert all(f"`make {target}`" in page for target in gen_commands.make_targets()), page
    assert all(f"### `{name}`" in page for name in gen_commands.cli_commands()), page
    assert {"run", "test", "docs"} <= set(gen_commands.make_targets())
