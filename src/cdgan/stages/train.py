"""The train stage: both networks into models/, metrics/train.json, plots/train/ and an MLflow run, with the
progress bar and scores during training."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from cdgan import distributed, tracking
from cdgan.data import Dataset, RealData, device_or_stream, load_dataset, mode_centres
from cdgan.devices import resolve_device
from cdgan.errors import CdganError
from cdgan.files import save_torch, sha256_file, write_json
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import Params, Paths
from cdgan.pictures import sample_picture
from cdgan.ranking import objective_for
from cdgan.reference import build_scorer
from cdgan.report import write_csv
from cdgan.sampler import draw_samples
from cdgan.stages.edge import run_stage
from cdgan.stages.trained import loss_label
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
BEST_MODEL = "best_generator"  # the LoggedModel of the sampling generator at each new best training score


@dataclass(frozen=True)
class TrainResult:
    mlflow_run_id: str
    steps: int
    seconds: float

    def summary(self) -> str:
        return f"trained {self.steps} steps in {self.seconds:.1f}s, MLflow run {self.mlflow_run_id}"


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
    centres = None if params.data.is_image else mode_centres(params.data.dataset)[0]
    system = tracking.system_monitor(state.rng.device)

    def score(generator: Generator, energy: EnergyNet) -> dict[str, float]:
        # raw G(z), as many samples as `evaluate` scores: FID's bias falls with the sample count (digits: about
        # 1.1-1.9 higher at 1000 than at 10,000), so only then is the history on the scale of fid and fid_gmm
        x = draw_samples(generator, energy, params.evaluate.n_samples, params.train.seed)
        # the same seed at every step: the image slider shows the same latents move
        title = f"{loss_label(params)}, raw G(z), step {state.step}"
        tracking.log_image(state.step, "train/samples", sample_picture(x, centres, title))
        return scorer(x)

    start = time.perf_counter()
    with tracking.tracked_run(params, paths, meta.mlflow_run_id) as run_id, _progress_bar() as progress:
        meta.mlflow_run_id = run_id
        description = f"train {loss_label(params)}" + (f" (resumed at {state.step})" if saved else "")
        task = progress.add_task(description, total=params.train.steps, completed=state.step, info="")
        history = meta.history

        def log(step: int, values: dict[str, float]) -> None:
            is_loss = "loss_e" in values
            if is_loss:
                tracking.log_metrics(step, values | system())
            else:  # scores during training (raw G(z), fewer samples) must not shadow evaluate's `fid` in MLflow
                is_best = _is_best(values, history["scores"], params.data.is_image)
                tracking.log_metrics(step, {f"train/{k}": v for k, v in values.items()})
                if is_best:  # after its metrics: the model takes those of its step
                    generator = _plain_copy(params, state.sampling_generator, real.shape)
                    tracking.log_model(step, BEST_MODEL, generator, (params.model.z_dim,), real.shape)
            history["losses" if is_loss else "scores"].append({"step": step} | values)
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


def _is_best(values: dict[str, float], earlier: list[dict[str, float]], is_image: bool) -> bool:
    """Whether the scores `values` beat every `earlier` score of this run (resumed ones included), ranked as
    every model is (`ranking.objective_for`)."""
    key = objective_for(is_image).sort_key
    return all(key(values) < key(scores) for scores in earlier)


def _plain_copy(params: Params, generator: Generator, data_shape: tuple[int, ...]) -> nn.Module:
    """`generator` as a network of torch's own modules (its body, then Generator.forward's reshape) on the CPU
    in eval mode, so that the logged model loads with torch alone; built without drawing from torch's global
    random stream, which checkpoints save and resumes restore."""
    with torch.random.fork_rng(devices=[]):
        copy, _ = build_models(params.model, data_shape)
    copy.load_state_dict(generator.state_dict())
    return nn.Sequential(copy.body, nn.Flatten(), nn.Unflatten(1, data_shape)).eval()


@contextmanager
def _progress_bar() -> Iterator[Progress]:
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"))
    # no refresh thread (its cost: benchmarks/costs.py): the bar redraws when the loop logs
    progress = Progress(
        *columns, TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), auto_refresh=False
    )
    with progress as bar:
        yield bar


def main(argv: list[str] | None = None) -> None:
    run_stage(train, argv)


if __name__ == "__main__":
    main()
