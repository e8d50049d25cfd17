"""Tests for cdgan.train: the energy-net step by hand, a short fit per loss, determinism, logging, divergence,
checkpoints and resume, EMA, GPU-path params."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from cdgan.data import StreamedBatches, build_dataset
from cdgan.errors import CdganError
from cdgan.files import load_torch, save_torch
from cdgan.losses import LOSSES
from cdgan.models import build_models
from cdgan.params import DataParams, ModelParams, TrainParams
from cdgan.sampler import draw_samples
from cdgan.train import (
    RunMeta,
    TrainState,
    WarmupEMA,
    checkpoint_dict,
    energy_step,
    fit,
    init_state,
    load_resumable,
    lr_factor,
    restore_state,
    resume_key,
)

MODEL = ModelParams(z_dim=4, hidden=8, channels=4)
CPU = torch.device("cpu")
LOG_KEYS = {"loss_e", "loss_g", "e_real", "e_fake", "grad_norm_g"}  # stages.LOSS_KEYS: the CSV and MLflow columns


def _train(**overrides: object) -> TrainParams:
    base = {"steps": 3, "batch_size": 8, "log_every": 1, "cd_k": 2, "device": "cpu"}
    return TrainParams(**(base | overrides))


def _points() -> Tensor:
    return torch.from_numpy(build_dataset(DataParams(dataset="grid25", n_points=200)).x)


def _images() -> Tensor:
    return torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1  # digits-sized, in [-1, 1]


def _state(train: TrainParams, x: Tensor) -> TrainState:
    return init_state(MODEL, train, tuple(x.shape[1:]), CPU)


def _snapshot(net: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _no_log(step: int, values: dict[str, float]) -> None:
    pass


def _chain(params: TrainParams, energy: torch.nn.Module, x: Tensor, rng: torch.Generator) -> Tensor:
    """x_k written out: cd_k steps x <- x - step_size * dE/dx + noise * eps, eps from `rng`, images kept in [-1, 1]."""
    x = x.detach()
    for _ in range(params.cd_k):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        x = x.detach() - params.langevin_step_size * grad + params.langevin_noise * torch.randn(x.shape, generator=rng)
        if x.dim() == 4:
            x = x.clamp(-1, 1)
    return x


@pytest.fixture
def deterministic() -> Iterator[None]:
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


@pytest.mark.parametrize("data", ["points", "images"])
@pytest.mark.parametrize("cd_k", [0, 2])
def test_energy_step_is_the_cd_loss_on_detached_chain_samples_plus_the_energy_penalty(cd_k: int, data: str) -> None:
    # given a state, and a copy of it to compute the step by hand
    params = _train(cd_k=cd_k, energy_reg=0.5, langevin_step_size=0.1, langevin_noise=0.05)
    x = _points() if data == "points" else _images()
    state = _state(params, x)
    by_hand = copy.deepcopy(state)
    # when
    values = energy_step(params, state, x)
    # then: a batch of real rows, x_k = cd_k Langevin steps from G(z), both from the loop's random stream...
    rng = by_hand.rng
    x_real = x[torch.randint(len(x), (params.batch_size,), generator=rng)]
    with torch.no_grad():
        x_gen = by_hand.generator(by_hand.generator.sample_z(params.batch_size, rng))
    x_k = _chain(params, by_hand.energy, x_gen, rng)
    # ... and the loss: CD_k (E_real - E(x_k)) plus energy_reg times the energy magnitudes
    e_real, e_fake = by_hand.energy(x_real), by_hand.energy(x_k)
    gap = e_real.mean() - e_fake.mean()
    expected = gap + 0.5 * (e_real.square().mean() + e_fake.square().mean())
    torch.testing.assert_close(values["loss_e"], expected.detach())
    assert not torch.isclose(values["loss_e"], gap.detach()), "the energy penalty is too small to be seen"
    torch.testing.assert_close(values["e_fake"], e_fake.mean().detach())
    # and its gradient treats x_k as data: it reaches E's parameters only through E(x_k), never G
    names = [name for name, _ in by_hand.energy.named_parameters()]
    grads = torch.autograd.grad(expected, list(by_hand.energy.parameters()))
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(state.energy.get_parameter(name).grad, grad, msg=f"dE/d{name}")
    assert all(p.grad is None for p in state.generator.parameters()), "the energy-net step reached G"


# every loss written out on energies E (a critic's logit is -E): (energy-net loss of E(real), E(fake); G's loss)
LOSSES_BY_HAND = {
    "cd": (lambda r, f: r.mean() - f.mean(), lambda g: g.mean()),
    "bce": (
        lambda r, f: torch.log1p(torch.exp(r)).mean() + torch.log1p(torch.exp(-f)).mean(),
        lambda g: torch.log1p(torch.exp(g)).mean(),  # non-saturating: -log sigmoid(-E(G(z)))
    ),
    "lsgan": (lambda r, f: 0.5 * ((r + 1) ** 2).mean() + 0.5 * (f**2).mean(), lambda g: 0.5 * ((g + 1) ** 2).mean()),
    "hinge": (lambda r, f: torch.clamp(1 + r, min=0).mean() + torch.clamp(1 - f, min=0).mean(), lambda g: g.mean()),
    "wgan-gp": (lambda r, f: r.mean() - f.mean(), lambda g: g.mean()),
}


def _input_grad(energy: nn.Module, x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(x).sum(), x, create_graph=True)
    return grad.flatten(1)


@pytest.mark.parametrize("real_gp", [0.0, 0.5])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_one_energy_step_and_one_generator_step_of_every_loss_match_the_hand_computed_gradients(
    loss: str, real_gp: float
) -> None:
    # given a conv model, the loss with its penalties switched on, and a copy of the state to compute by hand
    params = _train(loss=loss, steps=1, cd_k=2, energy_reg=0.5, gp_weight=10.0, real_gp=real_gp,
                    langevin_step_size=0.1, langevin_noise=0.05)  # fmt: skip
    x = _images()
    start = _state(params, x)
    energy_loss, generator_loss = LOSSES_BY_HAND[loss]

    # when the loop takes one energy-net step, and (from the same start) one step of each network
    stepped = copy.deepcopy(start)
    values = energy_step(params, stepped, x)
    trained = fit(copy.deepcopy(start), x, params, _no_log)

    # then the energy step is the loss on a real batch and on G(z) (x_k for CD), drawn from the loop's stream...
    by_hand = copy.deepcopy(start)
    rng, energy = by_hand.rng, by_hand.energy
    x_real = x[torch.randint(len(x), (params.batch_size,), generator=rng)]
    with torch.no_grad():
        x_fake = by_hand.generator(by_hand.generator.sample_z(params.batch_size, rng))
    if loss == "cd":
        x_fake = _chain(params, energy, x_fake, rng)
    e_real, e_fake = energy(x_real), energy(x_fake)
    expected = energy_loss(e_real, e_fake)
    if loss == "cd":  # the energy magnitude penalty: CD alone has unbounded energies
        expected = expected + 0.5 * (e_real.square().mean() + e_fake.square().mean())
    if loss == "wgan-gp":  # (|dE/dx| - 1)^2 at alpha real + (1 - alpha) fake
        alpha = torch.rand(params.batch_size, generator=rng).view(-1, 1, 1, 1)
        norms = _input_grad(energy, alpha * x_real + (1 - alpha) * x_fake).norm(dim=1)
        expected = expected + 10.0 * ((norms - 1) ** 2).mean()
    if real_gp:  # R1: |dE/dx|^2 at the real batch
        expected = expected + real_gp * _input_grad(energy, x_real).square().sum(1).mean()
    torch.testing.assert_close(values["loss_e"], expected.detach())
    names = [name for name, _ in energy.named_parameters()]
    for name, grad in zip(names, torch.autograd.grad(expected, list(energy.parameters())), strict=True):
        torch.testing.assert_close(stepped.energy.get_parameter(name).grad, grad, msg=f"{loss}: dE/d{name}")

    # ... and the generator step is G's loss on the energy net as the energy step left it (spectral norm's
    # power iteration included), on the next latents of the stream
    z = by_hand.generator.sample_z(params.batch_size, rng)
    loss_g = generator_loss(stepped.energy(by_hand.generator(z)))
    names = [name for name, _ in by_hand.generator.named_parameters()]
    grads = torch.autograd.grad(loss_g, list(by_hand.generator.parameters()))
    for name, grad in zip(names, grads, strict=True):
        torch.testing.assert_close(trained.generator.get_parameter(name).grad, grad, msg=f"{loss}: dG/d{name}")


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_only_losses_that_refine_their_negatives_depend_on_cd_k(loss: str) -> None:
    # given two copies of one state
    x = _points()
    state = _state(_train(loss=loss), x)
    # when each takes an energy-net step, with and without a Langevin chain
    with_chain = energy_step(_train(loss=loss, cd_k=3), copy.deepcopy(state), x)
    without = energy_step(_train(loss=loss, cd_k=0), copy.deepcopy(state), x)
    # then only CD's loss changes: its negatives are x_k; the other losses' are G(z) whatever cd_k is
    changed = not torch.equal(with_chain["e_fake"], without["e_fake"])
    assert LOSSES[loss].refines_negatives == (loss == "cd"), "only CD refines its negatives by Langevin"
    assert changed == LOSSES[loss].refines_negatives, f"{loss}: cd_k changed E(x_fake): {changed}"


@pytest.mark.parametrize("data", ["points", "images"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_fit_trains_every_loss(loss: str, data: str) -> None:
    # given
    x = _points() if data == "points" else _images()
    params = _train(loss=loss)
    state = _state(params, x)
    before_g, before_e = _snapshot(state.generator), _snapshot(state.energy)
    logged: list[dict[str, float]] = []
    # when
    fit(state, x, params, lambda step, values: logged.append(values))
    # then both networks moved and every logged value is finite
    assert state.step == params.steps
    after_g, after_e = state.generator.state_dict(), state.energy.state_dict()
    assert any(not torch.equal(before_g[k], after_g[k]) for k in before_g), f"{loss}: generator did not change"
    assert any(not torch.equal(before_e[k], after_e[k]) for k in before_e), f"{loss}: energy net did not change"
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all() for v in logged), f"{loss}: {logged}"


def test_same_seed_gives_bitwise_equal_weights(deterministic: None) -> None:
    # given two runs from the same params
    params = _train(loss="cd", steps=4)
    x = _images()
    # when
    a = fit(_state(params, x), x, params, _no_log)
    b = fit(_state(params, x), x, params, _no_log)
    c_params = params.model_copy(update={"seed": 1})
    c = fit(_state(c_params, x), x, c_params, _no_log)
    # then
    for net in ("generator", "energy"):
        sa, sb, sc = (getattr(s, net).state_dict() for s in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{net}: same seed, different weights"
        assert any(not torch.equal(sa[k], sc[k]) for k in sa), f"{net}: different seeds, same weights"


def test_log_is_called_every_log_every_steps_with_documented_keys() -> None:
    # given
    params = _train(steps=7, log_every=3)
    x = _points()
    calls: list[tuple[int, dict[str, float]]] = []
    # when
    fit(_state(params, x), x, params, lambda step, values: calls.append((step, values)))
    # then: every log_every steps plus the last step, with plain floats under the documented keys
    assert [step for step, _ in calls] == [3, 6, 7]
    for step, values in calls:
        assert set(values) == LOG_KEYS, f"step {step}: {sorted(values)}"
        assert all(type(v) is float for v in values.values()), f"step {step}: {values}"


def test_score_is_logged_every_eval_every_steps() -> None:
    # given
    params = _train(steps=4, log_every=10, eval_every=2)
    x = _points()
    calls: list[tuple[int, dict[str, float]]] = []
    # when
    fit(_state(params, x), x, params, lambda s, v: calls.append((s, v)), score=lambda g, e: {"modes": 1.0})
    # then
    assert [s for s, v in calls if "modes" in v] == [2, 4]


def test_scoring_during_training_leaves_the_trained_networks_as_they_would_be_without_it(
    deterministic: None,
) -> None:
    """Why the quality tests train with eval_every 0: the history is a side channel, not part of the model."""
    # given a conv model with BatchNorm and an EMA energy net (the sampler switches both to eval mode and back)
    scored = _train(steps=4, eval_every=1, energy_ema=0.9)
    x = _images()

    def score(generator: nn.Module, energy: nn.Module) -> dict[str, float]:
        return {"fid": float(draw_samples(generator, energy, 16, seed=0).mean())}

    # when one run scores samples after every step and the other never does
    a = fit(_state(scored, x), x, scored, _no_log, score=score)
    unscored = scored.model_copy(update={"eval_every": 0})
    b = fit(_state(unscored, x), x, unscored, _no_log, score=score)
    # then every network and buffer is bitwise the same
    for net in ("generator", "energy", "sampling_generator", "sampling_energy"):
        sa, sb = getattr(a, net).state_dict(), getattr(b, net).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"{net}: scoring changed the training"


def test_n_critic_steps_the_energy_net_n_times_per_generator_step() -> None:
    # given
    params = _train(steps=3, n_critic=2)
    x = _points()
    # when
    state = fit(_state(params, x), x, params, _no_log)
    # then Adam counted 6 energy-net steps and 3 generator steps
    e_steps = {int(s["step"]) for s in state.opt_e.state_dict()["state"].values()}
    g_steps = {int(s["step"]) for s in state.opt_g.state_dict()["state"].values()}
    assert e_steps == {6} and g_steps == {3}


def test_nan_in_data_stops_with_error_naming_the_step() -> None:
    # given data with a NaN in every row
    x = _points()
    x[:, 0] = float("nan")
    params = _train(steps=10, log_every=2)
    logged: list[int] = []
    # when / then
    with pytest.raises(CdganError, match="diverged at step 2") as err:
        fit(_state(params, x), x, params, lambda step, values: logged.append(step))
    assert "train.lr" in str(err.value), "the message should name the params to change"
    assert logged == [], "diverged values must not be logged"


def test_huge_learning_rate_stops_with_error() -> None:
    # given a learning rate that blows up the energies
    params = _train(loss="cd", lr=1e6, steps=20, log_every=1, energy_reg=0.0)
    x = _points()
    # when / then
    with pytest.raises(CdganError, match=r"diverged at step \d+"):
        fit(_state(params, x), x, params, _no_log)


def test_diverged_run_never_leaves_a_non_finite_checkpoint(tmp_path: Path) -> None:
    # given NaN data, a checkpoint due every step, and logging only every 4 steps
    x = _points()
    x[:, 0] = float("nan")
    params = _train(steps=10, log_every=4, checkpoint_every=1)
    path = tmp_path / "checkpoint.pt"
    # when
    with pytest.raises(CdganError, match="diverged at step 1:"):
        fit(_state(params, x), x, params, _no_log, checkpoint_path=path)
    # then the finiteness check ran before the first save, not at the first log: nothing was written
    assert not path.exists(), "a checkpoint of a diverged state was saved"
    assert list(tmp_path.iterdir()) == [], "no temporary checkpoint file is left behind either"


def test_checkpoint_holds_everything_to_resume(tmp_path: Path) -> None:
    # given
    params = _train(steps=4, checkpoint_every=2)
    x = _points()
    path = tmp_path / "models" / "checkpoint.pt"
    # when
    meta = RunMeta(MODEL, params, tuple(x.shape[1:]), "r1", {"losses": [{"step": 2, "loss_e": 0.5}], "scores": []})
    state = fit(_state(params, x), x, params, _no_log, checkpoint_path=path, meta=meta)
    saved = load_torch(path, "checkpoint")  # weights_only: the checkpoint holds no arbitrary objects
    # then
    assert {"generator", "energy", "opt_g", "opt_e", "rng", "step", "meta"} <= set(saved)
    assert saved["step"] == 4 and saved["meta"] == {
        "model": MODEL.model_dump(),
        "train": params.model_dump(),
        "data_shape": [2],
        "mlflow_run_id": "r1",
        "history": {"losses": [{"step": 2, "loss_e": 0.5}], "scores": []},
    }, "the meta is saved as plain data"
    assert RunMeta.from_dict(saved["meta"]) == meta, "and read back as it was"
    for key, value in state.generator.state_dict().items():
        assert torch.equal(saved["generator"][key], value), key
    assert torch.equal(saved["rng"]["loop"], state.rng.get_state())


def test_resume_from_checkpoint_is_bitwise(tmp_path: Path, deterministic: None) -> None:
    # given one run of 4 steps, and one of 2 steps checkpointed
    full = _train(steps=4, loss="wgan-gp", energy_ema=0.9)
    half = full.model_copy(update={"steps": 2})
    x = _points()
    straight = fit(_state(full, x), x, full, _no_log)
    fit(_state(half, x), x, half, _no_log, checkpoint_path=tmp_path / "checkpoint.pt")
    # when a fresh state is restored from the checkpoint and trained on to step 4
    saved = load_torch(tmp_path / "checkpoint.pt")
    resumed = _state(full, x)
    restore_state(resumed, saved)
    assert resumed.step == 2
    fit(resumed, x, full, _no_log)
    # then it matches the uninterrupted run bit for bit
    for net in ("generator", "energy", "sampling_generator", "sampling_energy"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{net} differs after resume"


def test_resume_of_a_conv_model_with_batchnorm_is_bitwise(tmp_path: Path, deterministic: None) -> None:
    # given image data: a conv generator with BatchNorm (running statistics, EMA of the buffers too) and CD chains
    full = _train(steps=4, cd_k=2)
    half = full.model_copy(update={"steps": 2})
    x = _images()
    straight = fit(_state(full, x), x, full, _no_log)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in straight.generator.modules()), "no BatchNorm to test"
    fit(_state(half, x), x, half, _no_log, checkpoint_path=tmp_path / "checkpoint.pt")
    # when a fresh state is restored at step 2 and trained on to step 4
    resumed = _state(full, x)
    restore_state(resumed, load_torch(tmp_path / "checkpoint.pt"))
    fit(resumed, x, full, _no_log)
    # then weights and buffers (BatchNorm's running mean, variance and batch count) match bit for bit
    for net in ("generator", "energy", "sampling_generator"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert a.keys() == b.keys()
        assert any("running_mean" in k for k in a) or net == "energy"
        assert all(torch.equal(a[k], b[k]) for k in a), f"{net} differs after resume"


def test_streamed_training_resumes_bitwise_at_its_batch(tmp_path: Path, deterministic: None) -> None:
    # given a stream of real batches (two DataLoader workers), and 2 energy steps per generator step
    full = _train(steps=4, n_critic=2, data_loading="stream")
    half = full.model_copy(update={"steps": 2})
    x = _points().numpy()

    def stream(start: int) -> StreamedBatches:
        return StreamedBatches(x, full.batch_size, full.seed, start, CPU, num_workers=2)

    straight = fit(_state(full, _points()), stream(0), full, _no_log)
    fit(_state(half, _points()), stream(0), half, _no_log, checkpoint_path=tmp_path / "checkpoint.pt")

    # when a run restored at step 2 streams on from batch 2 * n_critic, as `cdgan train` does
    resumed = _state(full, _points())
    restore_state(resumed, load_torch(tmp_path / "checkpoint.pt"))
    fit(resumed, stream(resumed.step * full.n_critic), full, _no_log)

    # then it matches the uninterrupted run bit for bit
    for net in ("generator", "energy"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{net} differs after resume"


def test_ema_generator_differs_from_raw_generator() -> None:
    # given
    params = _train(steps=4, ema=0.9)
    x = _points()
    # when
    state = fit(_state(params, x), x, params, _no_log)
    # then the sampling generator is the EMA copy, with different weights
    assert state.sampling_generator is not state.generator
    raw, ema = state.generator.state_dict(), state.sampling_generator.state_dict()
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "EMA weights equal the raw weights"


def test_without_ema_the_raw_generator_samples() -> None:
    params = _train(steps=1, ema=0.0)
    x = _points()
    state = fit(_state(params, x), x, params, _no_log)
    assert state.ema is None and state.sampling_generator is state.generator


def test_energy_ema_is_the_energy_the_sampler_and_scores_get() -> None:
    # given an energy-net EMA, and a score that records the networks it is handed
    params = _train(steps=4, energy_ema=0.9, eval_every=4)
    x = _points()
    scored: list[torch.nn.Module] = []

    def score(generator: torch.nn.Module, energy: torch.nn.Module) -> dict[str, float]:
        scored.append(energy)
        return {}

    # when
    state = fit(_state(params, x), x, params, _no_log, score)
    # then the sampling energy is the averaged copy, with other weights than the trained net, and scores use it
    assert state.sampling_energy is state.energy_ema.module and scored == [state.sampling_energy]
    raw, averaged = state.energy.state_dict(), state.sampling_energy.state_dict()
    assert raw.keys() == averaged.keys()
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw), "EMA weights equal the trained weights"


def test_without_energy_ema_the_trained_energy_samples() -> None:
    params = _train(steps=1)
    x = _points()
    state = fit(_state(params, x), x, params, _no_log)
    assert state.energy_ema is None and state.sampling_energy is state.energy


def test_checkpoint_dict_without_ema() -> None:
    params = _train(ema=0.0)
    state = _state(params, _points())
    assert checkpoint_dict(state, None)["ema"] is None


def test_resume_with_replay_buffer_and_regularisers_is_bitwise(tmp_path: Path, deterministic: None) -> None:
    # given the CD extras on: replay buffer, R1 on real data, chain gradient clipping, cooperative generator
    full = _train(steps=6, replay_size=16, replay_frac=0.5, real_gp=1.0, langevin_grad_clip=0.5)
    full = full.model_copy(update={"generator_objective": "cooperative"})
    half = full.model_copy(update={"steps": 3})
    x = _points()
    straight = fit(_state(full, x), x, full, _no_log)
    fit(_state(half, x), x, half, _no_log, checkpoint_path=tmp_path / "checkpoint.pt")
    # when resumed from step 3
    resumed = _state(full, x)
    restore_state(resumed, load_torch(tmp_path / "checkpoint.pt"))
    fit(resumed, x, full, _no_log)
    # then the buffer was used and saved, and the weights match bit for bit
    assert straight.replay_count == 6 * 8 and resumed.replay_count == straight.replay_count
    assert torch.equal(straight.replay, resumed.replay)
    for net in ("generator", "energy"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{net} differs after resume"


def test_replay_buffer_holds_recent_chain_samples() -> None:
    params = _train(steps=5, replay_size=12, replay_frac=1.0)
    x = _points()
    state = fit(_state(params, x), x, params, _no_log)
    assert state.replay_count == 5 * 8
    assert state.replay.abs().sum(1).gt(0).all(), "every slot written once the ring wrapped"


def test_cooperative_generator_regresses_onto_its_langevin_revision() -> None:
    # given a cooperative run of one step, and a copy of its state after the energy-net step of that step
    params = _train(steps=1, generator_objective="cooperative", langevin_step_size=0.1, langevin_noise=0.05)
    x = _points()
    state = _state(params, x)
    by_hand = copy.deepcopy(state)
    energy_step(params, by_hand, x)
    logged: list[dict[str, float]] = []
    # when
    fit(state, x, params, lambda step, values: logged.append(values))
    # then loss_g is |G(z) - x_k|^2 summed over a row, averaged over the batch, for x_k the chain from G(z) on E
    z = by_hand.generator.sample_z(params.batch_size, by_hand.rng)
    with torch.no_grad():
        x_gen = by_hand.generator(z)
    x_k = _chain(params, by_hand.energy, x_gen, by_hand.rng)
    expected = (x_gen - x_k).square().sum(1).mean()
    assert logged[0]["loss_g"] == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("bad", [{"loss": "bce"}, {"cd_k": 0}])
def test_cooperative_needs_cd_with_a_chain(bad: dict) -> None:
    with pytest.raises(ValueError, match="cooperative needs loss=cd and cd_k > 0"):
        _train(generator_objective="cooperative", **bad)


def test_separate_energy_learning_rate() -> None:
    state = _state(_train(lr=1e-3, lr_e=5e-4), _points())
    assert state.opt_g.param_groups[0]["lr"] == 1e-3 and state.opt_e.param_groups[0]["lr"] == 5e-4


def test_lr_decay_holds_the_rate_then_lowers_it_linearly_over_the_last_share_of_the_steps() -> None:
    factors = [lr_factor(_train(steps=10, lr_decay=0.5), step) for step in range(10)]
    assert factors == pytest.approx([1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2])
    assert [lr_factor(_train(steps=10), step) for step in range(10)] == [1.0] * 10, "lr_decay 0: constant"


def test_fit_steps_both_optimisers_at_the_decayed_rates() -> None:
    # given a run whose rates fall over all 4 steps, the energy net at its own rate
    params = _train(steps=4, lr=1e-3, lr_e=4e-4, lr_decay=1.0)
    x = _points()
    state = _state(params, x)
    seen: list[float] = []

    def log(step: int, values: dict[str, float]) -> None:
        seen.extend([state.opt_g.param_groups[0]["lr"], state.opt_e.param_groups[0]["lr"]])

    # when it trains
    fit(state, x, params, log)
    # then each step used the scheduled rates
    assert seen == pytest.approx([lr * f for f in (1, 0.75, 0.5, 0.25) for lr in (1e-3, 4e-4)])


def test_an_interrupted_run_with_lr_decay_resumes_bitwise(tmp_path: Path, deterministic: None) -> None:
    # given a run with decaying rates, checkpointed at step 2 and stopped at step 3
    params = _train(steps=4, lr_decay=0.75, checkpoint_every=2)
    x = _points()
    straight = fit(_state(params, x), x, params, _no_log)

    def stop_at_3(step: int, values: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_state(params, x), x, params, stop_at_3, checkpoint_path=tmp_path / "checkpoint.pt")
    # when a fresh state is restored from the checkpoint and trained on to the end
    resumed = _state(params, x)
    restore_state(resumed, load_torch(tmp_path / "checkpoint.pt"))
    assert resumed.step == 2
    fit(resumed, x, params, _no_log)
    # then it matches the uninterrupted run bit for bit: the rates follow the step, not a scheduler's state
    for net in ("generator", "energy"):
        a, b = getattr(straight, net).state_dict(), getattr(resumed, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{net} differs after resume"


def test_amp_runs_the_forward_passes_in_bfloat16_on_cpu() -> None:
    # given
    params = _train(amp=True)
    x = _images()
    state = _state(params, x)
    # when
    values = energy_step(params, state, x)
    fit(state, x, params, _no_log)
    plain = fit(_state(_train(), x), x, _train(), _no_log)
    # then the energies came out of autocast, the weights stayed fp32 and moved, other than without amp
    assert values["e_real"].dtype == torch.bfloat16, "energy net ran outside bf16 autocast"
    after, fp32 = state.energy.state_dict(), plain.energy.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(after[k], fp32[k]) for k in after), "amp changed nothing: was autocast on?"


def test_channels_last_lays_out_the_conv_weights_and_trains_the_same_model() -> None:
    # given
    x = _images()
    nhwc = _train(channels_last=True)
    # when
    state = fit(_state(nhwc, x), x, nhwc, _no_log)
    plain = fit(_state(_train(), x), x, _train(), _no_log)
    # then
    conv_weights = [p for p in state.energy.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    a, b = state.energy.state_dict(), plain.energy.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"energy: {key}")
    # the generator by its samples: a conv bias just before BatchNorm gets only rounding noise as gradient,
    # which Adam scales up to full steps, but batch statistics cancel that bias exactly
    z = torch.randn(16, MODEL.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(state.generator(z), plain.generator(z), rtol=1e-4, atol=1e-5)


def test_channels_last_is_refused_for_points() -> None:
    with pytest.raises(CdganError, match=r"channels_last applies to conv models .* shape \(2,\)"):
        _state(_train(channels_last=True), _points())


@pytest.mark.slow  # compiling both networks: about 30 s on a busy 2-core CPU with a cold inductor cache
def test_compile_trains_the_same_model_under_the_same_state_dict_keys() -> None:
    # given
    x = _points()
    model = MODEL.model_copy(update={"spectral_norm": False})
    compiled = _train(compile=True, replay_size=16, replay_frac=0.5)
    plain_params = compiled.model_copy(update={"compile": False})
    # when
    state = fit(init_state(model, compiled, (2,), CPU), x, compiled, _no_log)
    plain = fit(init_state(model, plain_params, (2,), CPU), x, plain_params, _no_log)
    # then checkpoints stay loadable by uncompiled networks, and the weights agree up to kernel rounding
    for net in ("generator", "energy", "sampling_generator"):
        a, b = getattr(state, net).state_dict(), getattr(plain, net).state_dict()
        assert a.keys() == b.keys(), f"{net}: compiling renamed the state_dict keys"
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=f"{net}: {key}")


def test_compile_is_refused_with_spectral_norm() -> None:
    with pytest.raises(CdganError, match=r"train\.compile does not work with model\.spectral_norm"):
        _state(_train(compile=True), _points())


@pytest.mark.parametrize("penalty", [{"loss": "wgan-gp"}, {"real_gp": 1.0}])
def test_compile_refuses_gradient_penalties(penalty: dict) -> None:
    with pytest.raises(ValueError, match=r"torch\.compile does not differentiate twice"):
        _train(compile=True, **penalty)


def test_ema_decay_warms_up_from_the_first_updates() -> None:
    # given a generator's weights at three successive steps, and the EMA of decay 0.999 over them
    torch.manual_seed(0)
    generator, _ = build_models(ModelParams(hidden=4), (2,))
    ema = WarmupEMA(generator, 0.999)
    ema.update_parameters(generator)  # the first update copies the weights
    expected = [p.detach().clone() for p in generator.parameters()]
    # when the EMA follows three more changes of the weights
    for n in range(1, 4):
        with torch.no_grad():
            for p in generator.parameters():
                p.add_(1.0)
        ema.update_parameters(generator)
        decay = min(0.999, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13: the warm-up, far below 0.999
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, generator.parameters(), strict=True)]
    # then its weights follow the warmed-up recursion, not a fixed 0.999 (which would stay near the start)
    for e, a in zip(expected, ema.module.parameters(), strict=True):
        assert torch.allclose(a, e, atol=1e-6)


def _device_count_ema(net: nn.Module, decay: float) -> AveragedModel:
    """The EMA as torch's AveragedModel computes it, its count and weight on the device (a host read per update)."""

    def update(averaged: list[Tensor], current: list[Tensor], n: Tensor) -> None:
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay)
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, weight.to(avg.dtype)) if avg.is_floating_point() else avg.copy_(cur)

    return AveragedModel(net, multi_avg_fn=update, use_buffers=True)


@pytest.mark.parametrize("decay", [0.999, 0.5])  # the warm-up alone, then past it (the cap reached at n = 8)
@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_ema_without_host_syncs_is_bitwise_the_averaged_model_with_the_count_on_the_device(
    decay: float, device: str
) -> None:
    # given a conv generator (float weights, BatchNorm statistics and counts), and both EMAs of it
    torch.manual_seed(0)
    generator = build_models(ModelParams(z_dim=4, channels=4), (1, 8, 8))[0].to(device)
    ours, reference = WarmupEMA(generator, decay), _device_count_ema(generator, decay)
    # when both follow 12 training-like changes of the weights and statistics
    for _ in range(12):
        with torch.no_grad():
            for p in generator.parameters():
                p.add_(0.1 * torch.randn_like(p))
        generator(torch.randn(8, 4, device=device))
        ours.update_parameters(generator)
        reference.update_parameters(generator)
    # then every weight, statistic and the count are bitwise equal, and a restored copy continues the count
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    restored = WarmupEMA(generator, decay)
    restored.load_state_dict(ours.state_dict())
    assert restored.updates == ours.updates == 12 and restored.weight() == ours.weight()


def test_ema_copies_batchnorm_counts_and_averages_its_statistics() -> None:
    # given a conv generator (BatchNorm: float running statistics and an integer batch count)
    torch.manual_seed(0)
    generator, _ = build_models(ModelParams(z_dim=4, channels=4), (1, 8, 8))
    ema = WarmupEMA(generator, 0.999)
    ema.update_parameters(generator)
    # when the generator runs a batch in training mode (moving its statistics) and the EMA follows
    generator(torch.randn(8, 4))
    ema.update_parameters(generator)
    # then the count is copied and the running means are averaged (decay 2/11 after one update)
    buffers, averaged = dict(generator.named_buffers()), dict(ema.module.named_buffers())
    count = next(k for k in buffers if k.endswith("num_batches_tracked"))
    assert averaged[count].dtype == torch.long and torch.equal(averaged[count], buffers[count])
    mean = next(k for k in buffers if k.endswith("running_mean"))
    assert torch.allclose(averaged[mean], (1 - 2 / 11) * buffers[mean], atol=1e-6)  # from zeros


def test_a_checkpoint_written_with_other_params_is_refused_not_resumed(tmp_path: Path) -> None:
    # given a resume checkpoint written by a run of these params
    params = _train()
    state = init_state(MODEL, params, (1, 8, 8), CPU)
    path = save_torch(tmp_path / "resume.pt", checkpoint_dict(state, RunMeta(MODEL, params, (1, 8, 8), "r1")))
    assert load_resumable(path, MODEL, params)["meta"]["mlflow_run_id"] == "r1", "the same params resume"
    assert load_resumable(tmp_path / "absent.pt", MODEL, params) is None, "no checkpoint: a fresh start"
    # when the train or model params changed, then it is refused with the fix, never restored
    for model, train in ((MODEL, _train(lr=1e-3)), (MODEL.model_copy(update={"hidden": 16}), params)):
        with pytest.raises(CdganError, match=r"resume\.pt: checkpoint was written with other model/train params"):
            load_resumable(path, model, train)


def test_the_resume_key_changes_with_the_params_and_the_data_only() -> None:
    params = _train()
    key = resume_key(MODEL, params, "a" * 64)
    assert key == resume_key(MODEL, _train(), "a" * 64), "the same params and data: the same key, so a rerun resumes"
    assert len(key) == 16
    others = {resume_key(MODEL, _train(lr=1e-3), "a" * 64), resume_key(MODEL, params, "b" * 64),
              resume_key(MODEL.model_copy(update={"z_dim": 8}), params, "a" * 64)}  # fmt: skip
    assert key not in others and len(others) == 3, "other train params, data or model params: another key"
