"""The params a flow runs: a params file or preset on top of the project's params.yaml, then dotted overrides
(`train.cd_k=5`), and a sweep's grid of them; validated here, before any flow, task or trial starts."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cdgan.errors import CdganError
from cdgan.params import Params, parse_params, read_params_yaml
from cdgan.presets import apply_preset, overlay_params


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """params.yaml content with dotted overrides applied: {"train.loss": "bce"} sets raw["train"]["loss"]."""
    # an empty section (`sample:` alone) reads as null; one that is not a mapping is left for parse_params to name
    out = {
        section: {} if values is None else dict(values) if isinstance(values, dict) else values
        for section, values in raw.items()
    }
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def resolve_params(project: Path, params_path: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The raw params a flow runs: `params_path` (relative to `project`) on top of the project's params.yaml, then
    the dotted `overrides`; not yet validated.

    A preset is an overlay (presets/*.yaml hold only the keys they change), so a key it lacks keeps params.yaml's
    value, never the schema's default; a full params file replaces every key it has; params.yaml on itself is
    itself.
    """
    base = read_params_yaml(project / "params.yaml")
    return with_overrides(overlay_params(base, read_params_yaml(project / params_path)), overrides)


def pipeline_params(project: Path, params_path: str | Path, overrides: dict[str, Any]) -> Params:
    """`resolve_params`, validated: what `cdgan-pipeline` runs. Raises CdganError naming each bad key."""
    return parse_params(resolve_params(project, params_path, overrides), str(params_path))


def write_project_params(project: Path, params_path: str | Path, overrides: dict[str, Any]) -> Params:
    """Validate `pipeline_params`, then write the keys it changes into the project's params.yaml through
    `apply_preset`: its other keys, order and comments stay, and it is not rewritten when nothing changes."""
    params = pipeline_params(project, params_path, overrides)
    overlay = with_overrides(read_params_yaml(project / params_path), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        preset = Path(tmp) / "overlay.yaml"
        preset.write_text(yaml.safe_dump(overlay, sort_keys=False))
        apply_preset(project / "params.yaml", preset)
    return params


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's key order, the last key varying fastest."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def trial_name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{key.split('.')[-1]}={value}" for key, value in overrides.items()) or "base"


def sweep_params(raw: dict[str, Any], grid: dict[str, list[Any]]) -> list[Params]:
    """The validated params of each trial of `grid` on top of `raw`, in `expand_grid` order. Raises CdganError
    naming the trial and key of a bad value, or when the trials do not share one data set."""
    params = [parse_params(with_overrides(raw, t), f"sweep trial {trial_name(t)}") for t in expand_grid(grid)]
    if len({p.data.dataset for p in params}) != 1:
        raise CdganError("cdgan-sweep: all trials must share data.dataset (one MLflow experiment per data set)")
    return params
