"""One function per pipeline stage (prepare, train, evaluate, register) plus `sample`.

The CLI, DVC (through the CLI), Prefect (through DVC) and the tests all call these.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cdgan import distributed, registry, tracking
from cdgan.classifier import StackedClassifier, classifier_accuracy, fit_classifier
from cdgan.data import (
    STACKED_BASE,
    Dataset,
    RealData,
    build_splits,
    device_or_stream,
    load_dataset,
    mode_centres,
    save_dataset,
)
from cdgan.devices import resolve_device
from cdgan.errors import CdganError
from cdgan.evaluation import (
    build_scorer,
    build_suite,
    primary_metric,
    reference_points,
    save_reference,
    score_model,
)
from cdgan.files import load_torch, read_json, save_torch, sha256_file, write_atomic, write_json
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import Params, Paths, SampleParams
from cdgan.pictures import save_samples_png
from cdgan.report import write_csv
from cdgan.sampler import draw_samples
from cdgan.train import (
    RunMeta,
    TrainState,
    checkpoint_dict,
    fit,
    init_state,
    load_resumable,
    restore_state,
    resume_key,
)

LOSS_KEYS = ("loss_e", "loss_g", "e_real", "e_fake", "grad_norm_g")


@dataclass(frozen=True)
class PrepareResult:
    n_examples: int
    data_shape: tuple[int, ...]
    classifier_accuracy: float | None


@dataclass(frozen=True)
class TrainResult:
    mlflow_run_id: str
    steps: int
    seconds: float


@dataclass(frozen=True)
class EvaluateResult:
    metrics: dict[str, float]
    metrics_json: Path
    samples_png: Path | None  # None for --model-uri, which writes only its metrics file


@dataclass(frozen=True)
class RegisterResult:
    version: int
    alias: str
    reason: str


def prepare(params: Params, paths: Paths) -> PrepareResult:
    """The training and held-out splits and, for images, the domain classifier: fitted on the training
    split, its accuracy measured and its FID reference statistics taken on the held-out split."""
    splits = build_splits(params.data)
    accuracy = None
    if params.data.is_image:
        # stacked sets: a digit classifier on the plain digits' training split, applied per channel
        is_stacked = params.data.dataset in STACKED_BASE
        base = {"dataset": STACKED_BASE.get(params.data.dataset)}
        labelled = build_splits(params.data.model_copy(update=base)) if is_stacked else splits
        classifier = fit_classifier(
            torch.from_numpy(labelled.train.x),
            torch.from_numpy(labelled.train.y),
            params.data.classifier_epochs,
            params.data.seed,
        )
        accuracy = classifier_accuracy(
            classifier, torch.from_numpy(labelled.heldout.x), torch.from_numpy(labelled.heldout.y)
        )
        if is_stacked:
            classifier = StackedClassifier(classifier, splits.train.shape[0])
        save_reference(paths.classifier, classifier, torch.from_numpy(splits.heldout.x), accuracy)
    else:
        paths.classifier.unlink(missing_ok=True)
    save_dataset(paths.heldout, splits.heldout)
    save_dataset(paths.dataset, splits.train)
    summary = {
        "n_examples": len(splits.train.x),
        "n_heldout": len(splits.heldout.x),
        "n_classes": splits.train.n_classes,
    }
    write_json(
        paths.metrics / "prepare.json", summary | ({"classifier_accuracy": accuracy} if accuracy is not None else {})
    )
    return PrepareResult(len(splits.train.x), splits.train.shape, accuracy)


def train(params: Params, paths: Paths) -> TrainResult:
    """Train both networks into models/, metrics/train.json, plots/train/ and an MLflow run.

    Under torchrun each process trains on its share of every global batch; rank 0 alone resumes, tracks,
    shows progress and writes, and every rank returns rank 0's result.
    """
    with distributed.process_group(resolve_device(params.train.device)) as device:
        world = distributed.world_size()
        if params.train.batch_size % world:
            raise CdganError(
                f"params.yaml: train.batch_size ({params.train.batch_size}) is the global batch and must divide "
                f"evenly over the {world} torchrun processes"
            )
        real = load_dataset(paths.dataset)
        resume_path = paths.resume / f"{resume_key(params.model, params.train, sha256_file(paths.dataset))}.pt"
        is_main = distributed.is_main()
        saved = load_resumable(resume_path, params.model, params.train) if is_main else None
        saved = distributed.broadcast_object(saved)  # rank 0's file to every rank: on several nodes only it has one
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True)  # same seed, same weights, bit for bit
        state = init_state(params.model, params.train, real.shape, device)
        if saved is not None:
            restore_state(state, saved)
        real_data = device_or_stream(params.train, real.x, state.step, device)
        if is_main:
            result = _train_tracked(params, paths, state, real, real_data, saved, resume_path)
        else:  # the same steps on this rank's shares; rank 0 saves the checkpoints
            fit(state, real_data, params.train, lambda step, values: None, checkpoint_path=resume_path)
            result = None
        return distributed.broadcast_object(result)


def _train_tracked(
    params: Params,
    paths: Paths,
    state: TrainState,
    real: Dataset,
    real_data: RealData,
    saved: dict[str, Any] | None,
    resume_path: Path,
) -> TrainResult:
    """Rank 0's training: the MLflow run, the progress bar, scores during training and every output file."""
    scorer = build_scorer(params.data.dataset, real, paths.classifier)
    meta = RunMeta.from_dict(saved["meta"]) if saved is not None else RunMeta(params.model, params.train, real.shape)

    def score(generator: Generator, energy: EnergyNet) -> dict[str, float]:
        # raw G(z), as many samples as `evaluate` scores: FID's bias falls with the sample count (digits: about
        # 1.1-1.9 higher at 1000 than at 10,000), so only then is the history on the scale of fid and fid_gmm
        return scorer(draw_samples(generator, energy, params.evaluate.n_samples, params.train.seed))

    start = time.perf_counter()
    with tracking.tracked_run(params, paths, meta.mlflow_run_id) as run_id, _progress_bar() as progress:
        meta.mlflow_run_id = run_id
        description = f"train {_loss_label(params)}" + (f" (resumed at {state.step})" if saved else "")
        task = progress.add_task(description, total=params.train.steps, completed=state.step, info="")
        history = meta.history

        def log(step: int, values: dict[str, float]) -> None:
            is_loss = "loss_e" in values
            history["losses" if is_loss else "scores"].append({"step": step} | values)
            # scores during training (raw G(z), fewer samples) must not shadow evaluate's `fid` in MLflow
            tracking.log_metrics(step, values if is_loss else {f"train/{k}": v for k, v in values.items()})
            info = " ".join(f"{k}={v:.3g}" for k, v in values.items())
            progress.update(task, completed=step, info=info, refresh=True)

        fit(state, real_data, params.train, log, score, resume_path, meta)
        seconds = time.perf_counter() - start
        save_torch(paths.checkpoint, checkpoint_dict(state, meta))
        save_torch(paths.generator, state.sampling_generator.state_dict())
        save_torch(paths.energy, state.sampling_energy.state_dict())
        for name, rows in history.items():
            write_csv(paths.train_plots / f"{name}.csv", rows)
            tracking.log_artifact(paths.train_plots / f"{name}.csv", "plots")
        summary = {"mlflow_run_id": run_id, "steps": state.step, "train_seconds": round(seconds, 2)}
        write_json(paths.train_metrics, summary | {k: history["losses"][-1][k] for k in LOSS_KEYS})
        tracking.log_metrics(None, {"train_seconds": seconds})
    resume_path.unlink(missing_ok=True)  # finished: the next run with these params starts fresh
    return TrainResult(run_id, state.step, seconds)


def _loss_label(params: Params) -> str:
    return f"cd k={params.train.cd_k}" if params.train.loss == "cd" else params.train.loss  # k is CD's alone


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    # no refresh thread (1-2% of a core, benchmarks/stage_costs.py): the bar redraws when the loop logs
    progress = Progress(
        *columns, TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), auto_refresh=False
    )
    with progress as bar:
        yield bar


def load_trained(
    params: Params, paths: Paths, data_shape: tuple[int, ...], generator_path: Path | None = None
) -> tuple[Generator, EnergyNet]:
    generator_path = generator_path or paths.generator
    generator, energy = build_models(params.model, data_shape)
    try:
        generator.load_state_dict(load_torch(generator_path, "generator"))
        energy.load_state_dict(load_torch(generator_path.parent / paths.energy.name, "energy net"))
    except RuntimeError as err:  # shape mismatch: the file was trained with other model params
        raise CdganError(f"{generator_path}: does not match params.yaml model section ({err}); retrain") from None
    return generator.eval(), energy.eval()


def evaluate(params: Params, paths: Paths, model_uri: str | None = None, out: Path | None = None) -> EvaluateResult:
    """Score models/ into metrics/eval.json, plots/eval/ and its MLflow run; or, with `model_uri`, any
    logged or registered sampler into the JSON file `out` only (no DVC output, no MLflow write)."""
    if (model_uri is None) != (out is None):
        raise CdganError("--model-uri and --out go together: a registered model's metrics go to --out only")
    if out is not None and out.resolve() == paths.eval_metrics.resolve():
        raise CdganError(f"--out {out} is the evaluate stage's DVC output; write the metrics elsewhere")
    run_id = read_json(paths.train_metrics)["mlflow_run_id"] if model_uri is None else None
    train_split, heldout = load_dataset(paths.dataset), load_dataset(paths.heldout)
    ev = params.evaluate
    device = resolve_device(ev.device, "evaluate.device")
    suite = build_suite(params.data.dataset, heldout, paths.classifier, ev, device)  # checks params against the data
    if model_uri is None:
        generator, energy = load_trained(params, paths, train_split.shape)
        sampling = params.sample
    else:
        bundle = _load_registered(paths, model_uri, train_split.shape)
        generator, energy, sampling = bundle.generator, bundle.energy, bundle.sampling
    evaluation = score_model(suite, generator.to(device), energy.to(device), sampling)
    metrics = evaluation.metrics | reference_points(suite, train_split)
    info = {"dataset": params.data.dataset, "feature_extractor": suite.feature_extractor, "n_samples": ev.n_samples,
            "sample_space": sampling.space}  # fmt: skip
    if model_uri is not None:
        write_json(out, metrics | info | {"model_uri": model_uri})
        return EvaluateResult(metrics, out, None)
    centres = None if params.data.is_image else mode_centres(params.data.dataset)[0]
    title = f"{_loss_label(params)}, {_sampling_label(sampling)}"
    png = save_samples_png(paths.eval_plots / "samples.png", evaluation.preview, centres, title)
    with tracking.tracked_run(params, paths, run_id):
        tracking.log_metrics(None, metrics)
        tracking.log_artifact(png, "samples")
    write_json(paths.eval_metrics, metrics | info | {"mlflow_run_id": run_id})
    return EvaluateResult(metrics, paths.eval_metrics, png)


def _sampling_label(sampling: SampleParams) -> str:
    if sampling.langevin_steps == 0:
        return "raw G(z)"
    return f"{sampling.langevin_steps} Langevin steps in {sampling.space} space at T={sampling.temperature:g}"


def _load_registered(paths: Paths, model_uri: str, data_shape: tuple[int, ...]) -> registry.Bundle:
    """A logged or registered sampler (networks and sampling settings) that fits the prepared data."""
    tracking.connect(paths)
    bundle = registry.load_sampler(model_uri)
    if tuple(bundle.generator.data_shape) != tuple(data_shape):
        raise CdganError(
            f"{model_uri} samples shape {tuple(bundle.generator.data_shape)} but {paths.dataset} holds "
            f"{tuple(data_shape)}: evaluate it in a project prepared with its data set"
        )
    return bundle


def register(params: Params, paths: Paths, force: bool = False) -> RegisterResult:
    """Log the sampler into the training run and register a version of `register.model_name`, gated by
    `registry.register_version` on the evaluation's primary metric, data set, data hash and feature extractor.

    The version is tagged with the lineage (git_commit, git_dirty, dvc_lock_sha256, data_sha256: the
    sha256 of data/prepared/dataset.npz, mlflow_run_id), every number in metrics/eval.json and `forced`;
    its model holds the params (MLmodel metadata) and the sample grid. The version exists only from here
    on, so it goes back into the run as tags model_name, model_version, model_alias and into
    metrics/register.json, not into metrics/eval.json.
    """
    run_id = read_json(paths.train_metrics)["mlflow_run_id"]
    evaluation = read_json(paths.eval_metrics)
    picture = paths.eval_plots / "samples.png"
    if not picture.exists():
        raise CdganError(f"{picture}: not found; run the evaluate stage first (dvc repro)")
    metric, lower_is_better = primary_metric(params.data.is_image)
    real_shape = load_dataset(paths.dataset).shape
    generator, energy = load_trained(params, paths, real_shape)
    sampling = params.sample
    comparable = {"dataset": evaluation["dataset"], "feature_extractor": evaluation["feature_extractor"],
                  "data_sha256": sha256_file(paths.dataset)}  # fmt: skip
    numbers = {key: float(value) for key, value in evaluation.items() if type(value) in (int, float)}
    name = params.register.model_name
    with tempfile.TemporaryDirectory() as tmp, tracking.tracked_run(params, paths, run_id):
        bundle = registry.save_bundle(
            Path(tmp) / "bundle.pt", params.model, real_shape, generator.state_dict(), energy.state_dict(), sampling
        )
        model_uri = registry.log_sampler(bundle, tracking.flat_params(params), picture, numbers)
        tags = {k: str(evaluation[k]) for k in numbers} | tracking.lineage_tags(paths.root) | {"mlflow_run_id": run_id}
        reg = registry.register_version(
            model_uri, name, metric, evaluation[metric], lower_is_better, comparable,
            params.register.min_improvement, force, tags,
        )  # fmt: skip
        tracking.set_tags({"model_name": name, "model_version": str(reg.version), "model_alias": reg.alias})
    write_json(
        paths.register_metrics,
        {"model_name": params.register.model_name, "version": reg.version, "alias": reg.alias,
         "is_champion": reg.alias == registry.CHAMPION, "reason": reg.reason, "mlflow_run_id": run_id},
    )  # fmt: skip
    return RegisterResult(reg.version, reg.alias, reg.reason)


def sample(
    params: Params,
    paths: Paths,
    n: int,
    seed: int,
    out: Path,
    model_uri: str | None = None,
    generator_path: Path | None = None,
) -> Path:
    """n samples to `out` (.npy): from --generator with the current params, else a registered model."""
    if n <= 0:
        raise CdganError(f"--n must be > 0 (got {n})")
    if generator_path is not None:
        generator, energy = load_trained(params, paths, load_dataset(paths.dataset).shape, generator_path)
        x = draw_samples(generator, energy, n, seed, params.sample).numpy()
    else:
        tracking.connect(paths)
        uri = model_uri or f"models:/{params.register.model_name}@{registry.CHAMPION}"
        x = registry.load_sampler(uri).sample(n, seed)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would append ".npy" to a path
            np.save(f, x)

    return write_atomic(out, write)
