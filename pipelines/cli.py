"""The flows' console scripts, `cdgan-pipeline`, `cdgan-sweep` and `cdgan-tune`, behind the edge of `cdgan`
(cdgan.stages.edge): a CdganError is one line and exit 1, a bad flag a usage line and exit 2.

Each validates its params (and a study its search space) before the flow starts, and imports the flow only then:
--help, a bad flag and a bad key answer without loading Prefect or starting its temporary server.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from cdgan.cli import run_app
from cdgan.errors import CdganError
from cdgan.stages.edge import guarded
from pipelines.overrides import pipeline_params, resolve_params, sweep_params

EPHEMERAL_START_SECONDS = 120  # for Prefect's temporary server, whose first start also migrates its database

ParamsOption = Annotated[
    str, typer.Option("--params", help="params file or preset, relative to --project, put on its params.yaml")
]
ProjectOption = Annotated[Path, typer.Option("--project", help="project directory holding dvc.yaml")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a params key (repeatable)")
]
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        metavar="ADDRESS",
        help="run the trials on the Dask scheduler at ADDRESS (tcp://host:8786) instead of local threads; needs "
        "cdgan's dask extra and the project on a filesystem the workers share",
    ),
]

pipeline_app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
sweep_app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
tune_app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)


@pipeline_app.command()
def pipeline(params: ParamsOption = "params.yaml", project: ProjectOption = Path(), set_: SetOption = None) -> None:
    """Run the cdgan-pipeline flow: prepare -> train -> evaluate -> register, each stage a Prefect task that runs
    it through DVC. The keys that --params and --set change are written into params.yaml first."""
    overrides = parse_assignments(set_ or [])
    pipeline_params(project.resolve(), params, overrides)
    from pipelines.flows import cdgan_pipeline

    with patient_ephemeral_server():
        cdgan_pipeline(params_path=params, project_dir=str(project), overrides=overrides)


@sweep_app.command(no_args_is_help=True)
def sweep(
    grid: Annotated[
        list[str],
        typer.Option(
            "--grid", metavar="KEY=V1,V2", help="a params key and its values (repeatable): one trial per combination"
        ),
    ],
    set_: SetOption = None,
    name: Annotated[str, typer.Option(help="report name: reports/<name>.md and .csv")] = "loss_comparison",
    cluster: ClusterOption = None,
    params: ParamsOption = "params.yaml",
    project: ProjectOption = Path(),
) -> None:
    """Run the cdgan-sweep flow: every combination of the --grid values, each trial a `dvc repro` in its own
    workspace and a nested MLflow run, then one comparison report."""
    values = parse_grid(grid)
    base = parse_assignments(set_ or [])
    sweep_params(resolve_params(project.resolve(), params, base), values)
    from pipelines.flows import cdgan_sweep

    with patient_ephemeral_server():
        cdgan_sweep(values, base, str(project), name, params, cluster)


@tune_app.command()
def tune(
    space: Annotated[str, typer.Option(help="search space file, relative to --project")] = "presets/tune-digits.yaml",
    trials: Annotated[int, typer.Option(help="finished trials the study should have")] = 20,
    name: Annotated[str, typer.Option(help="study name: rerun with it to continue the study")] = "digits",
    params: ParamsOption = "params.yaml",
    project: ProjectOption = Path(),
    storage: Annotated[
        str | None,
        typer.Option(
            help="study storage: journal:PATH (a journal file, PATH relative to --project; use it with --cluster) "
            "or an RDB URL (default: sqlite:///PROJECT/sweeps/optuna.db)"
        ),
    ] = None,
    set_: SetOption = None,
    cluster: ClusterOption = None,
) -> None:
    """Run the cdgan-tune flow: an Optuna study over a YAML search space, each trial a `dvc repro` in its own
    workspace; prints the best trial, and writes its params as presets/tuned-<name>.yaml."""
    base = parse_assignments(set_ or [])
    from pipelines import studies

    studies.study_inputs(project.resolve(), space, trials, params, base)
    studies.resolve_storage(storage, project.resolve())
    from pipelines.tune import cdgan_tune

    with patient_ephemeral_server():
        best = cdgan_tune(space, trials, name, params, str(project), storage, base, cluster)
    print(json.dumps(best, indent=2))


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """["train.loss=cd,bce", ...] -> {"train.loss": ["cd", "bce"]}, each value read as YAML (numbers stay numbers)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, values = _split(item, "--grid", "KEY=V1,V2, e.g. train.loss=cd,bce")
        if key in grid:
            raise CdganError(f"--grid {key}: given twice; put all its values in one --grid {key}=V1,V2")
        grid[key] = [_read_value(item, value) for value in values.split(",")]
    return grid


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """["train.cd_k=5", ...] -> {"train.cd_k": 5}, the whole value read as YAML; a later one of a key wins."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, value = _split(item, "--set", "KEY=VALUE, e.g. train.cd_k=5")
        overrides[key] = _read_value(item, value)
    return overrides


def _split(item: str, flag: str, expected: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CdganError(f"{flag} {item!r}: expected {expected}")
    return key, value


def _read_value(item: str, value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or " ".join(str(err).split())  # one line
        raise CdganError(f"{item!r}: {value!r} is not a YAML value ({problem})") from None


def patient_ephemeral_server() -> AbstractContextManager[object]:
    """Without PREFECT_API_URL a flow run starts a temporary server, which Prefect waits for too briefly on a
    busy machine: EPHEMERAL_START_SECONDS instead. A setting of the user's is left alone."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        return nullcontext()
    return temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_START_SECONDS})


def pipeline_main(argv: list[str] | None = None) -> None:
    guarded(lambda: run_app(pipeline_app, "cdgan-pipeline", argv))


def sweep_main(argv: list[str] | None = None) -> None:
    guarded(lambda: run_app(sweep_app, "cdgan-sweep", argv))


def tune_main(argv: list[str] | None = None) -> None:
    guarded(lambda: run_app(tune_app, "cdgan-tune", argv))
