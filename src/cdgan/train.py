"""The one training loop: energy-net and generator steps, logging, scoring, checkpoints and the rules of resuming."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from cdgan import distributed
from cdgan.data import RealData, StreamedBatches
from cdgan.errors import CdganError
from cdgan.files import load_torch, save_torch
from cdgan.losses import LOSSES, Loss, energy_magnitude, gradient_penalty, real_gradient_penalty, refine_langevin
from cdgan.models import EnergyNet, Generator, build_models
from cdgan.params import ModelParams, TrainParams, is_image_shape

Log = Callable[[int, dict[str, float]], None]
Score = Callable[[Generator, EnergyNet], dict[str, float]]
ENERGY_BOUND = 1e4  # |E| beyond this means the energy net diverged (lr or Langevin step too large)


@dataclass
class TrainState:
    generator: Generator
    energy: EnergyNet
    ema: WarmupEMA | None
    energy_ema: WarmupEMA | None
    opt_g: torch.optim.Optimizer
    opt_e: torch.optim.Optimizer
    rng: torch.Generator  # batches, latents, chain noise
    replay: Tensor | None = None  # (replay_size, *data_shape) past chain samples, filled as a ring
    replay_count: int = 0  # chain samples pushed so far
    step: int = 0

    @property
    def sampling_generator(self) -> Generator:
        """The generator users get: EMA weights when enabled."""
        return self.ema.module if self.ema is not None else self.generator

    @property
    def sampling_energy(self) -> EnergyNet:
        """The energy net the model output is refined on: EMA weights when enabled."""
        return self.energy_ema.module if self.energy_ema is not None else self.energy


def init_state(model: ModelParams, train: TrainParams, data_shape: tuple[int, ...], device: torch.device) -> TrainState:
    """Both networks from `train.seed` (the same on every rank), on `device`, in the layout and compiled
    form the GPU-path params ask for; raises CdganError where those params do not fit the data or device."""
    _check_gpu_path(model, train, data_shape, device)
    torch.manual_seed(train.seed)
    layout = torch.channels_last if train.channels_last else torch.preserve_format  # applies to 4-D weights only
    generator, energy = (net.to(device, memory_format=layout) for net in build_models(model, data_shape))
    if distributed.world_size() > 1 and device.type == "cuda":  # BatchNorm over the global batch (no CPU kernel)
        nn.SyncBatchNorm.convert_sync_batchnorm(generator)  # swaps the generator's BatchNorm layers in place
    ema, energy_ema = (
        WarmupEMA(net, decay) if decay > 0 else None
        for net, decay in ((generator, train.ema), (energy, train.energy_ema))
    )
    if train.compile:  # in place, after the EMA copy: state_dict keys stay those of the plain networks
        generator.compile()
        energy.compile()
    betas = (train.beta1, train.beta2)
    return TrainState(
        generator,
        energy,
        ema,
        energy_ema,
        torch.optim.Adam(generator.parameters(), lr=train.lr, betas=betas),
        torch.optim.Adam(energy.parameters(), lr=train.lr_e or train.lr, betas=betas),
        torch.Generator(device).manual_seed(train.seed),
        torch.zeros(train.replay_size, *data_shape, device=device) if train.replay_size else None,
    )


class WarmupEMA(AveragedModel):
    """An exponential moving average of `net` whose decay after n updates is min(decay, (1 + n) / (10 + n)), as
    TensorFlow's ExponentialMovingAverage with num_updates. A fixed 0.999 would keep 0.999^2000 = 13.5 % of the
    random initial weights in the sampling generator after a 2000-step run, which spoils its samples.

    `AveragedModel.update_parameters` reads its count `n_averaged` back from the device twice per call, two host
    syncs per training step on CUDA (benchmarks/loop.py, gpu, counts them); here the count is mirrored on the
    host, so an update only queues device work. The state dict stays AveragedModel's (`module.*`, `n_averaged`).
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        super().__init__(net, use_buffers=True)
        self.decay = decay
        self.updates = 0  # == n_averaged, on the host

    def weight(self) -> float:
        """The weight of the current network in the next update, in float32 arithmetic as a device tensor would
        compute it, so the average is bitwise the one AveragedModel gave with the same decay."""
        n = np.float32(self.updates)
        return float(np.float32(1) - min(np.float32(self.decay), (n + 1) / (n + 10)))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = itertools.chain(self.module.parameters(), self.module.buffers())
        current = itertools.chain(model.parameters(), model.buffers())
        weight = self.weight()
        for avg, cur in zip(averaged, current, strict=True):
            if self.updates == 0 or not avg.is_floating_point():  # the first update and BatchNorm's counts copy
                avg.copy_(cur)
            else:
                avg.lerp_(cur, weight)
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        loaded = super().load_state_dict(state_dict, strict, assign)
        self.updates = int(self.n_averaged)  # one host read, when a run resumes
        return loaded


def _check_gpu_path(model: ModelParams, train: TrainParams, data_shape: tuple[int, ...], device: torch.device) -> None:
    if train.compile and model.spectral_norm:  # inductor lets backward save a vector the power iteration updates
        raise CdganError("train.compile does not work with model.spectral_norm; set one of them to false")
    if train.channels_last and not is_image_shape(data_shape):
        raise CdganError(f"train.channels_last applies to conv models (image data), not data of shape {data_shape}")
    if train.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise CdganError(f"train.amp needs bfloat16, which {torch.cuda.get_device_name(device)} lacks; set amp: false")


@dataclass
class RunMeta:
    """What a checkpoint holds besides tensors: the params that built it, the data shape, the MLflow run and
    the history logged so far. Saved as plain data (`to_dict`), which loading with `weights_only` accepts."""

    model: ModelParams
    train: TrainParams
    data_shape: tuple[int, ...]
    mlflow_run_id: str | None = None
    history: dict[str, list[dict[str, float]]] = field(default_factory=lambda: {"losses": [], "scores": []})

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.model_dump(),
            "train": self.train.model_dump(),
            "data_shape": list(self.data_shape),
            "mlflow_run_id": self.mlflow_run_id,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> RunMeta:
        model, train = ModelParams(**meta["model"]), TrainParams(**meta["train"])
        return cls(model, train, tuple(meta["data_shape"]), meta["mlflow_run_id"], meta["history"])


def checkpoint_dict(state: TrainState, meta: RunMeta | None) -> dict[str, Any]:
    """Everything needed to resume or to sample: both networks, optimisers, EMA, RNG states, step, params."""
    return {
        "generator": state.generator.state_dict(),
        "energy": state.energy.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "energy_ema": state.energy_ema.state_dict() if state.energy_ema is not None else None,
        "opt_g": state.opt_g.state_dict(),
        "opt_e": state.opt_e.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "loop": state.rng.get_state()},
        "replay": {"buffer": state.replay, "count": state.replay_count},
        "step": state.step,
        "meta": meta.to_dict() if meta is not None else {},
    }


def restore_state(state: TrainState, saved: dict[str, Any]) -> None:
    """Put a `checkpoint_dict` back: the loop then continues exactly as if it had never stopped."""
    state.generator.load_state_dict(saved["generator"])
    state.energy.load_state_dict(saved["energy"])
    if state.ema is not None:
        state.ema.load_state_dict(saved["ema"])
    if state.energy_ema is not None:
        state.energy_ema.load_state_dict(saved["energy_ema"])
    state.opt_g.load_state_dict(saved["opt_g"])
    state.opt_e.load_state_dict(saved["opt_e"])
    torch.set_rng_state(saved["rng"]["torch"])
    state.rng.set_state(saved["rng"]["loop"])
    if state.replay is not None:
        state.replay.copy_(saved["replay"]["buffer"])  # onto the state's device: checkpoints load to the CPU
    state.replay_count = saved["replay"]["count"]
    state.step = saved["step"]


def resume_key(model: ModelParams, train: TrainParams, data_sha256: str) -> str:
    """Same model and train params on the same prepared data (its sha256): the same key, so a rerun resumes."""
    spec = {"model": model.model_dump(), "train": train.model_dump(), "data_sha256": data_sha256}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def load_resumable(path: Path, model: ModelParams, train: TrainParams) -> dict[str, Any] | None:
    """The `checkpoint_dict` saved at `path`, or None when there is none: a fresh start. A checkpoint written
    with other model or train params is refused, never restored."""
    if not path.exists():
        return None
    saved = load_torch(path, "checkpoint")
    meta = saved["meta"]
    if meta["model"] != model.model_dump() or meta["train"] != train.model_dump():
        raise CdganError(f"{path}: checkpoint was written with other model/train params; delete it to start fresh")
    return saved


def _autocast(params: TrainParams, s: TrainState) -> torch.autocast:
    """bf16 autocast of the forward passes when `train.amp`: no loss scaling needed, unlike fp16."""
    return torch.autocast(s.rng.device.type, dtype=torch.bfloat16, enabled=params.amp)


def _latents(params: TrainParams, s: TrainState) -> Tensor:
    return distributed.share(s.generator.sample_z(params.batch_size, s.rng))  # (B / world, z_dim)


def _refine(params: TrainParams, s: TrainState, x: Tensor) -> Tensor:
    """x_k: `cd_k` Langevin steps on E from x (images stay in [-1, 1]).

    The noise is this rank's share of a global-batch draw, so under torchrun the ranks together run
    exactly the single-process chains.
    """

    def global_noise(x: Tensor) -> Tensor:
        eps = torch.randn(params.batch_size, *x.shape[1:], generator=s.rng, device=x.device, dtype=x.dtype)
        return distributed.share(eps)

    return refine_langevin(
        s.energy,
        x,
        params.cd_k,
        params.langevin_step_size,
        params.langevin_noise,
        s.generator.output_range,
        grad_clip=params.langevin_grad_clip,
        draw_noise=global_noise,  # from s.rng, so refine_langevin's own `generator` stays unused
    )


def _chain_starts(params: TrainParams, s: TrainState, x_gen: Tensor) -> Tensor:
    """G(z), the first `replay_frac` of the global batch swapped for past chain samples once the buffer
    holds a batch."""
    n_replay = round(params.replay_frac * params.batch_size) if s.replay is not None else 0
    filled = min(s.replay_count, params.replay_size)
    if n_replay == 0 or filled < params.batch_size:
        return x_gen
    index = torch.randint(filled, (params.batch_size,), generator=s.rng, device=x_gen.device)
    is_replay = torch.arange(params.batch_size, device=x_gen.device) < n_replay
    is_replay = distributed.share(is_replay).view(-1, *[1] * (x_gen.dim() - 1))  # (B / world, 1, ...)
    return torch.where(is_replay, s.replay[distributed.share(index)], x_gen)


def _push_replay(params: TrainParams, s: TrainState, x_k: Tensor) -> None:
    if s.replay is None:
        return
    x_k = distributed.gather_shares(x_k)  # every rank keeps the same buffer: the global batch's chains
    slots = (s.replay_count + torch.arange(len(x_k), device=x_k.device)) % params.replay_size
    s.replay[slots] = x_k
    s.replay_count += len(x_k)


def _update(net: nn.Module, opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(net)  # under torchrun: the gradient of the global batch, on every rank
    opt.step()


def _real_batch(params: TrainParams, s: TrainState, real: RealData) -> Tensor:
    if isinstance(real, StreamedBatches):
        return real.next()
    index = torch.randint(len(real), (params.batch_size,), generator=s.rng, device=s.rng.device)
    return real[distributed.share(index)]


def _negatives(params: TrainParams, s: TrainState, is_refined: bool) -> Tensor:
    """G(z), detached and in fp32; for CD_k (`is_refined`) the chains after k Langevin steps on E, started from
    G(z) or from replayed samples, and pushed to the replay buffer."""
    with torch.no_grad():
        x_fake = s.generator(_latents(params, s)).float()  # fp32 chains: bf16 would swallow small steps
    if is_refined:
        x_fake = _refine(params, s, _chain_starts(params, s, x_fake))
        _push_replay(params, s, x_fake)
    return x_fake


def _energy_loss(
    params: TrainParams, s: TrainState, loss: Loss, x_real: Tensor, x_fake: Tensor, e_real: Tensor, e_fake: Tensor
) -> Tensor:
    """The loss's energy-net term plus the penalties the loss and params ask for."""
    loss_e = loss.energy(e_real, e_fake)
    if loss.is_unbounded:
        loss_e = loss_e + params.energy_reg * energy_magnitude(e_real, e_fake)
    if loss.has_gradient_penalty:
        alpha = distributed.share(torch.rand(params.batch_size, generator=s.rng, device=s.rng.device))
        loss_e = loss_e + params.gp_weight * gradient_penalty(s.energy, x_real, x_fake, alpha)
    if params.real_gp:
        loss_e = loss_e + params.real_gp * real_gradient_penalty(s.energy, x_real)
    return loss_e


def energy_step(params: TrainParams, s: TrainState, real: RealData) -> dict[str, Tensor]:
    """One energy-net step on this rank's share of a global batch (all of it outside torchrun), in dcgan's
    order: energy on real data, energy on the detached negatives, then the energy net's update."""
    loss = LOSSES[params.loss]
    x_real = _real_batch(params, s, real)
    with _autocast(params, s):
        x_fake = _negatives(params, s, loss.refines_negatives)
        e_real, e_fake = s.energy(x_real), s.energy(x_fake)
        loss_e = _energy_loss(params, s, loss, x_real, x_fake, e_real, e_fake)
    _update(s.energy, s.opt_e, loss_e)
    return {"loss_e": loss_e.detach(), "e_real": e_real.mean().detach(), "e_fake": e_fake.mean().detach()}


def _generator_step(params: TrainParams, s: TrainState) -> dict[str, Tensor]:
    with _autocast(params, s):
        x_gen = s.generator(_latents(params, s)).float()
        if params.generator_objective == "cooperative":  # CoopNets: G regresses onto its own Langevin revision
            loss_g = (x_gen - _refine(params, s, x_gen)).square().flatten(1).sum(1).mean()
        else:
            loss_g = LOSSES[params.loss].generator(s.energy(x_gen))
    _update(s.generator, s.opt_g, loss_g)
    for average, net in ((s.ema, s.generator), (s.energy_ema, s.energy)):  # once per generator step, both
        if average is not None:
            average.update_parameters(net)
    return {"loss_g": loss_g.detach()}


def lr_factor(params: TrainParams, step: int) -> float:
    """The learning rates' multiplier before generator step `step` + 1: 1, then linearly down to 0 over the last
    `lr_decay` share of the steps (pix2pix's schedule). A function of the step alone, so resuming needs no state."""
    decay_steps = params.lr_decay * params.steps
    return 1.0 if decay_steps == 0 else min(1.0, (params.steps - step) / decay_steps)


def _set_lrs(params: TrainParams, s: TrainState) -> None:
    factor = lr_factor(params, s.step)
    for opt, base in ((s.opt_g, params.lr), (s.opt_e, params.lr_e or params.lr)):
        for group in opt.param_groups:
            group["lr"] = base * factor


def _check_finite(step: int, values: dict[str, float], params: TrainParams) -> None:
    bad = {
        k: v for k, v in values.items() if not abs(v) < float("inf") or (k.startswith("e_") and abs(v) > ENERGY_BOUND)
    }
    if bad:
        raise CdganError(
            f"training diverged at step {step}: {bad}. Lower train.lr (now {params.lr}) or "
            f"train.langevin_step_size (now {params.langevin_step_size}), or raise train.energy_reg"
        )


def fit(
    state: TrainState,
    real: RealData,
    params: TrainParams,
    log: Log,
    score: Score | None = None,
    checkpoint_path: Path | None = None,
    meta: RunMeta | None = None,
) -> TrainState:
    """Train from `state.step` to `params.steps` generator steps on `real`: a tensor on the device (batches
    drawn from the loop's own random stream) or a stream that starts at batch `state.step * params.n_critic`.

    Under torchrun every rank calls this with the same state, data and `checkpoint_path`; only rank 0 saves.
    """
    state.generator.train()
    while state.step < params.steps:
        _set_lrs(params, state)
        for _ in range(params.n_critic):
            values = energy_step(params, state, real)
        values |= _generator_step(params, state)
        state.step += 1
        step, is_last = state.step, state.step == params.steps
        is_log = step % params.log_every == 0 or is_last
        is_checkpoint = checkpoint_path is not None and (step % params.checkpoint_every == 0 or is_last)
        if is_log:  # the generator's gradients of this step are still in place until its next step
            values["grad_norm_g"] = nn.utils.clip_grad_norm_(state.generator.parameters(), float("inf"))  # no clip
        if is_log or is_checkpoint:
            logged = distributed.mean_values(values)  # the loop's only host sync (and, under torchrun, all-reduce)
            _check_finite(step, logged, params)  # before any checkpoint: never save a diverged state
        if is_log:
            log(step, logged)
        if score is not None and params.eval_every and (step % params.eval_every == 0 or is_last):
            log(step, score(state.sampling_generator, state.sampling_energy))
        if is_checkpoint and distributed.is_main():
            save_torch(checkpoint_path, checkpoint_dict(state, meta))
    return state
