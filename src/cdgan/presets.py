"""Presets: overlays on a params file (only the keys they change), merged, validated and written into it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cdgan.errors import CdganError
from cdgan.params import Params, parse_params, read_params_yaml


@dataclass(frozen=True)
class ParamChange:
    """One leaf of a params file that a preset changed."""

    key: str  # dotted, as in errors and `dvc exp run -S`: train.cd_k
    old: Any  # None also when the file did not have the key (see was_set)
    new: Any
    was_set: bool  # whether the params file had the key before


@dataclass(frozen=True)
class AppliedPreset:
    params: Params  # the params file's content now, validated
    changes: tuple[ParamChange, ...]  # empty: the file already held every value and was not rewritten


def overlay_params(base: dict, overlay: dict) -> dict:
    """`base` with `overlay` on top: a mapping in both is merged key by key, any other value of `overlay` replaces
    `base`'s. Returns a new dict; neither argument is changed, nothing is validated."""
    out = dict(base)
    for key, value in overlay.items():
        below = base.get(key)
        out[key] = overlay_params(below, value) if isinstance(value, dict) and isinstance(below, dict) else value
    return out


def read_preset(preset_path: Path | str, params_path: Path | str = "params.yaml") -> dict:
    """The raw params of `params_path` with a preset on top, not yet validated (callers may override keys first).

    A preset (presets/*.yaml) is an overlay: it holds only the keys it changes, so it means nothing alone.
    """
    preset_path = Path(preset_path)
    if not preset_path.is_file():
        raise CdganError(f"{preset_path}: preset not found (the shipped ones are in presets/)")
    return overlay_params(read_params_yaml(Path(params_path)), read_params_yaml(preset_path))


def load_preset(preset_path: Path | str, params_path: Path | str = "params.yaml") -> Params:
    """`params_path` with the preset on top, validated; errors name the preset and each bad dotted key."""
    return parse_params(read_preset(preset_path, params_path), source=f"{preset_path} on {params_path}")


def apply_preset(params_path: Path | str, preset_path: Path | str) -> AppliedPreset:
    """Write a preset's keys into a params file, keeping its other keys, its order and its comments.

    The merged result is validated first: a bad preset raises one CdganError naming each bad key, and the file
    is left as it was. The file is rewritten (atomically) only if a value changes; a key it lacked goes into
    its section after the keys the schema puts before it.
    """
    params_path = Path(params_path)
    base = read_params_yaml(params_path)
    merged = read_preset(preset_path, params_path)
    params = parse_params(merged, source=f"{preset_path} on {params_path}")
    changes = tuple(_changes(base, merged, ()))
    if changes:
        text = _with_changes(params_path.read_text(), changes)
        written = parse_params(yaml.safe_load(text), source=f"{params_path} as rewritten")
        assert written == params, f"the round trip of {params_path} through ruamel.yaml changed a value"
        from cdgan.files import write_atomic  # files loads torch, which nothing else here needs

        write_atomic(params_path, lambda tmp: tmp.write_text(text))
    return AppliedPreset(params, changes)


def _changes(base: Any, merged: dict, prefix: tuple[str, ...]) -> list[ParamChange]:
    """The leaves of `merged` that differ from `base`'s, in `merged`'s order (a value of another type differs)."""
    out = []
    for key, new in merged.items():
        path = (*prefix, str(key))
        was_set = isinstance(base, dict) and key in base
        old = base[key] if was_set else None
        if isinstance(new, dict):
            out += _changes(old, new, path)
        elif not was_set or type(old) is not type(new) or old != new:
            out.append(ParamChange(".".join(path), old, new, was_set))
    return out


def _with_changes(text: str, changes: tuple[ParamChange, ...]) -> str:
    """`text` (a params file) with `changes` set through ruamel.yaml's round trip, which keeps comments and layout."""
    from ruamel.yaml import YAML  # only apply_preset writes YAML by hand
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):  # a subclass: add_representer on ruamel's own class is global
        pass

    Representer.add_representer(type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    Representer.add_representer(float, _represent_float)
    rt = YAML()
    rt.Representer = Representer
    doc = rt.load(text) or CommentedMap()
    for change in changes:
        *parents, name = change.key.split(".")
        node, model = doc, Params
        for part in parents:
            if part not in node:
                node.insert(_position(node, part, model), part, CommentedMap())
            elif not isinstance(node[part], dict):  # an empty section (`sample:` alone) reads as null
                node[part] = CommentedMap()
            node, model = node[part], model.model_fields[part].annotation
        value = change.new
        if isinstance(value, list):  # params.yaml writes lists on one line
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        if name in node:
            node[name] = value
        else:
            node.insert(_position(node, name, model), name, value)
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def _position(node: dict, key: str, model: type[BaseModel]) -> int:
    """Where a new `key` goes in `node`: after the last key that `model` declares before it."""
    rank = {name: i for i, name in enumerate(model.model_fields)}
    before = [i for i, name in enumerate(node) if rank.get(name, -1) < rank[key]]
    return before[-1] + 1 if before else 0


def _represent_float(rep: Any, value: float) -> Any:
    text = repr(value)  # the shortest text that reads back as the same float
    if value != value or value in (float("inf"), float("-inf")):
        text = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[text]
    elif "e" in text and "." not in text:
        text = text.replace("e", ".0e")  # PyYAML, which load_params uses, reads 1e-05 as a string, 1.0e-05 as a float
    return rep.represent_scalar("tag:yaml.org,2002:float", text)
