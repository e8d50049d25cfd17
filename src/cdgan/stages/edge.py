"""The edge of every command, `cdgan` and `python -m cdgan.stages.<stage>`: the one place errors and signals are
caught, and the line a stage prints when it is done."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from rich.console import Console

from cdgan.errors import CdganError, Terminated
from cdgan.params import Params, Paths, load_params

INTERRUPTED = 130  # exit code of a command stopped by Ctrl-C (128 + SIGINT)
TERMINATED = 143  # exit code of a command stopped by SIGTERM (128 + SIGTERM), as a shell reports it
PARAMS_FILE = Path("params.yaml")
console = Console(stderr=True)


class StageResult(Protocol):
    def summary(self) -> str: ...


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated


def guarded(command: Callable[[], int | None]) -> None:
    """Run `command`, all of a process's work, and turn how it ends into the process's exit.

    A `CdganError` prints one line, `cdgan: error: ...`, and exits 1. Ctrl-C exits 130 and SIGTERM (Prefect
    cancelling a flow run, `kill`, a scheduler, `systemctl stop`) 143, each with one line, once the exception
    has unwound the stage: the resume checkpoint stays, the MLflow run ends KILLED. Anything else is a bug and
    keeps its traceback. `command` may return an exit code instead of raising (typer returns 130 for Ctrl-C).
    """
    before = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = command()
    except KeyboardInterrupt:
        code = INTERRUPTED
    except Terminated:
        print("cdgan: terminated (rerun it: train resumes from its last checkpoint)", file=sys.stderr)
        raise SystemExit(TERMINATED) from None
    except CdganError as err:
        print(f"cdgan: error: {err}", file=sys.stderr)  # one line, no traceback
        raise SystemExit(1) from None
    finally:
        signal.signal(signal.SIGTERM, before)
    if code == INTERRUPTED:
        print("cdgan: interrupted (rerun it: train resumes from its last checkpoint)", file=sys.stderr)
        raise SystemExit(code)


def report(result: StageResult) -> None:
    """The line a stage command prints when it is done; under torchrun, rank 0's alone (every rank returns)."""
    if os.environ.get("RANK", "0") == "0":
        console.print(result.summary())


def run_stage(stage: Callable[[Params, Paths], StageResult], argv: list[str] | None = None) -> None:
    """`python -m cdgan.stages.<stage> [--params FILE]`, what dvc.yaml runs: the stage on the params, in the
    project in the working directory, behind the same edge as `cdgan <stage>`."""
    module = sys.modules[stage.__module__]  # under `python -m`, __main__: its spec still has the dotted name
    parser = argparse.ArgumentParser(prog=f"python -m {module.__spec__.name}", description=module.__doc__)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params.yaml to read")
    args = parser.parse_args(argv)
    guarded(lambda: report(stage(load_params(args.params), Paths())))
