"""The MLflow model: a pyfunc sampler over the generator (and energy net), registration, the champion gate."""

from __future__ import annotations

import importlib.metadata
import io
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from cdgan.errors import CdganError
from cdgan.files import load_torch, save_torch
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams, SampleParams, is_image_shape
from cdgan.sampler import draw_samples
from cdgan.store import retried, store_lock

if TYPE_CHECKING:  # the served model's code imports no metric code: the objective comes in as an argument
    from cdgan.ranking import Objective

CHAMPION, CHALLENGER = "champion", "challenger"
# What sets the scale of the ranking metric, as metrics/eval.json records it: a version is ranked against the
# champion only when all of them agree. FID's bias falls with the sample count and moves with the seed; the real
# side (the held-out split), the feature network (`data.classifier_epochs` retrains it) and the training split
# (what the model learnt, and the floors) each change what a figure means. data_sha256, features_sha256 and
# reference_sha256 are file hashes (the evaluate stage's `scale_hashes`); n_samples and seed are
# `evaluate.n_samples` and `evaluate.seed`.
SCALE_KEYS = ("dataset", "data_sha256", "feature_extractor", "features_sha256", "reference_sha256", "n_samples", "seed")
FORMATS = ("array", "png")  # the Sampler's predict param `format`
_DECIDE_TRIES = 3  # decisions retaken when a writer on another machine moves the champion under ours


@dataclass(frozen=True)
class Bundle:
    """What a sampler needs: both networks and how to refine G(z) on E."""

    generator: Generator
    energy: EnergyNet
    sampling: SampleParams

    def sample(self, n: int, seed: int) -> np.ndarray:
        return draw_samples(self.generator, self.energy, n, seed, self.sampling).numpy()


def save_bundle(
    path: Path,
    model: ModelParams,
    data_shape: tuple[int, ...],
    generator_state: dict,
    energy_state: dict,
    sampling: SampleParams,
) -> Path:
    return save_torch(
        path,
        {
            "model": model.model_dump(),
            "data_shape": list(data_shape),
            "generator": generator_state,
            "energy": energy_state,
            "sampling": sampling.model_dump(),
        },
    )


def load_bundle(path: Path) -> Bundle:
    saved = load_torch(path, "model bundle")
    generator, energy = build_models(ModelParams(**saved["model"]), tuple(saved["data_shape"]))
    generator.load_state_dict(saved["generator"])
    energy.load_state_dict(saved["energy"])
    return Bundle(generator.eval(), energy.eval(), SampleParams(**saved["sampling"]))


class Sampler(mlflow.pyfunc.PythonModel):
    """pyfunc model: a table with columns `n` and optional `seed` (default 0) -> samples, rows concatenated.

    The same (n, seed) row always gives the same samples, in this process, a fresh one or a server.
    Output depends on the predict param `format`:
    - "array" (default): (sum n, 2) points or (sum n, C, H, W) images in [-1, 1], float32.
    - "png" (images only): a DataFrame with one column `png`, one row per image, each a PNG file's bytes
      at the native size (C = 1 grey, C = 3 RGB). `mlflow models serve` sends bytes as base64 strings:
      POST {"dataframe_split": {...}, "params": {"format": "png"}} -> {"predictions": [{"png": "iVBOR..."}, ...]}.

    Bad requests raise MlflowException(INVALID_PARAMETER_VALUE), which a server answers with HTTP 400.
    """

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["bundle"]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray | pd.DataFrame:
        fmt = (params or {}).get("format", "array")
        if fmt not in FORMATS:
            raise _bad_request(f"format must be one of {FORMATS} (got {fmt!r})")
        if fmt == "png" and not is_image_shape(self.bundle.generator.data_shape):
            raise _bad_request("format=png needs an image model; this one samples 2-D points")
        ns = model_input["n"]
        if (ns <= 0).any():
            raise _bad_request(f"n must be > 0 in every row (got {ns.tolist()})")
        seeds = model_input["seed"] if "seed" in model_input else pd.Series([0] * len(model_input))
        parts = [self.bundle.sample(int(n), int(seed)) for n, seed in zip(ns, seeds, strict=True)]
        x = np.concatenate(parts).astype(np.float32)
        if fmt == "png":
            return pd.DataFrame({"png": [_png_bytes(image) for image in x]})
        return x


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _png_bytes(image: np.ndarray) -> bytes:
    """(C, H, W) in [-1, 1] -> one PNG file, 8 bits per channel."""
    pixels = np.clip(np.rint((image + 1) * 127.5), 0, 255).astype(np.uint8)  # (C, H, W)
    picture = Image.fromarray(pixels[0]) if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# Distributions whose modules the logged model imports when it loads: cdgan.registry and the cdgan modules it
# imports (tests/test_serving.py derives that set from the imports and checks it against this list).
SERVING_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "numpy",
    "pandas",
    "pillow",
    "pydantic",
    "pyyaml",
    "requests",
    "filelock",
    "sqlalchemy",
)


def serving_requirements() -> list[str]:
    """pip requirements of the logged model: SERVING_DISTRIBUTIONS pinned to the versions installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SERVING_DISTRIBUTIONS]


def log_sampler(
    bundle_path: Path,
    params: dict[str, Any] | None = None,
    picture: Path | None = None,
    metrics: dict[str, float] | None = None,
) -> str:
    """Log the pyfunc sampler into the active run; returns its model URI.

    `params` (flat params.yaml keys, as the logging stage read them) go into the MLmodel file's metadata
    under `cdgan_params`, and `picture` (the evaluation's sample grid) into the model's artifacts as
    `samples_png`, so both travel with every version registered from it. `metrics` (the evaluation's
    numbers) become the logged model's metrics, MLflow 3's way: the model's page and every version
    registered from it show them (they are logged into the run again, linked to the model).

    The model carries its own code: the cdgan package's source as it is now goes in under code/cdgan/, which
    MLflow puts first on sys.path when it loads the model, so a fresh process loads it where cdgan is not
    installed, and samples with the code that logged it where another cdgan is (a process that imported
    cdgan already keeps its own). Its requirements are the packages that code imports, pinned to the
    installed versions (`serving_requirements`), so `mlflow models serve
    --env-manager virtualenv` or `mlflow models build-docker` builds an environment that can load it.
    """
    example = pd.DataFrame({"n": [2], "seed": [0]})
    data_shape = load_bundle(bundle_path).generator.data_shape
    signature = ModelSignature(
        inputs=Schema([ColSpec("long", "n"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *data_shape))]),  # format="array"
        params=ParamSchema([ParamSpec("format", "string", FORMATS[0])]),
    )
    artifacts = {"bundle": str(bundle_path)} | ({"samples_png": str(picture)} if picture is not None else {})
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "cdgan"  # a copy without __pycache__: compiled files of this Python only
        shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__"))
        info = retried(
            lambda: mlflow.pyfunc.log_model(
                name="sampler",
                python_model=Sampler(),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                metadata={"cdgan_params": params} if params else None,
                code_paths=[str(code)],
                pip_requirements=serving_requirements(),
            )
        )
    if metrics:
        retried(lambda: mlflow.log_metrics(metrics, model_id=info.model_id))
    return info.model_uri


def load_sampler(model_uri: str) -> Bundle:
    """The bundle behind any logged or registered sampler URI (models:/cdgan@champion, runs:/..., ...)."""
    try:
        return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().bundle
    except MlflowException as err:
        raise CdganError(
            f"cannot load model {model_uri} ({err.message}); run the pipeline (dvc repro) first, "
            "or pass --model-uri or --generator models/generator.pt"
        ) from None


@dataclass(frozen=True)
class Registration:
    version: int
    alias: str
    reason: str


def register_version(
    model_uri: str,
    name: str,
    objective: Objective,
    metrics: Mapping[str, float],
    comparable: dict[str, str],
    min_improvement: float,
    force: bool = False,
    tags: dict[str, str] | None = None,
) -> Registration:
    """Register a new version; it becomes `champion` only if its `metrics` beat the champion's by more than
    `min_improvement` on `objective` (`Objective.gain`), measured on the same `comparable` terms (the register
    stage gives one value for each of SCALE_KEYS), or if `force`; otherwise `challenger`. The reason is the
    version tag `alias_reason`.

    `tags` (lineage, evaluation metrics), `comparable`, the objective's metrics, `metric` (the objective's name)
    and `forced` ("true" / "false") are set on the version before the alias moves, so the next registration can
    compare against it. Store calls are tried again on transient errors (a locked SQLite file, a server
    restarting).

    Concurrent registrations. MLflow has no compare-and-set for aliases, so the read-compare-set runs under
    `store_lock(uri, "alias-<name>")`, an OS file lock: beside the database for a SQLite store (every
    process that opens that file), in the temp directory under the URI's hash for a server (every process on
    this machine). Registrations sharing the lock are serialised: each one reads the champion that the one
    before it left, so however they overlap, the champion ends where registering them one after another (in
    lock order) would put it; with two comparable versions, the better one by more than `min_improvement`.
    Writers that do not share the lock (another machine against the same server) are not serialised: after
    setting `champion`, the alias is read back, and if such a writer moved it meanwhile the decision is
    taken again against the new champion (at most _DECIDE_TRIES times). This repairs an overwrite that lands
    before the read-back; one that lands after it (a writer whose own read preceded our write and whose
    write follows our read-back) can still leave the worse version champion. Run registrations of one model
    from one machine, or through one pipeline at a time, where that matters.
    """
    client = MlflowClient()
    version = retried(lambda: mlflow.register_model(model_uri, name)).version
    ranked = {key: str(metrics[key]) for key in objective.keys}
    own_tags = {**(tags or {}), **comparable, **ranked, "metric": objective.name, "forced": str(force).lower()}
    for key, tag in own_tags.items():
        retried(lambda key=key, tag=tag: client.set_model_version_tag(name, version, key, tag))
    with store_lock(mlflow.get_tracking_uri(), f"alias-{name}"):
        for _ in range(_DECIDE_TRIES):
            champion = _champion(client, name)
            alias, reason = _decide_alias(champion, objective, metrics, comparable, min_improvement)
            if force and alias != CHAMPION:
                alias, reason = CHAMPION, f"forced (--force) over: {reason}"
            retried(lambda alias=alias: client.set_registered_model_alias(name, alias, version))
            if alias != CHAMPION or _version_of(_champion(client, name)) == version:  # compare after set
                break
        else:
            alias, reason = CHALLENGER, f"champion moved {_DECIDE_TRIES} times by other machines right after ours"
            retried(lambda: client.set_registered_model_alias(name, CHALLENGER, version))
        retried(lambda: client.set_model_version_tag(name, version, "alias_reason", reason))
    return Registration(int(version), alias, reason)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return retried(lambda: client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException as err:
        if err.get_http_status_code() in (400, 404):  # no alias yet (400) or no registered model (404)
            return None
        raise


def _version_of(model_version: ModelVersion | None) -> str | None:
    return None if model_version is None else model_version.version


def _decide_alias(
    champion: ModelVersion | None,
    objective: Objective,
    metrics: Mapping[str, float],
    comparable: dict[str, str],
    margin: float,
) -> tuple[str, str]:
    if champion is None:
        return CHAMPION, "first version"
    mismatch = {k: (champion.tags.get(k), v) for k, v in comparable.items() if champion.tags.get(k) != v}
    missing = [key for key in objective.keys if key not in champion.tags]
    if mismatch or missing:
        why = mismatch or ", ".join(missing) + " missing"
        return CHALLENGER, f"not comparable with champion v{champion.version}: {why}"
    ours, theirs = objective.describe(metrics), objective.describe(champion.tags)
    if objective.gain(metrics, champion.tags) > margin:
        return CHAMPION, f"{ours} beats champion v{champion.version} ({theirs})"
    return CHALLENGER, f"{ours} does not beat champion v{champion.version} ({theirs}) by > {margin}"
