"""The vanishing-gradient probe: same frozen generator for every loss, gradients measured, files written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdgan.data import build_dataset
from cdgan.errors import CdganError
from cdgan.params import DataParams, ModelParams, Paths, TrainParams, parse_params
from cdgan.probe import gradient_probe, probe
from cdgan.stages.prepare import prepare
from tests.conftest import tiny_raw

MODEL = ModelParams(z_dim=4, hidden=16)
TRAIN = TrainParams(batch_size=32, cd_k=1, device="cpu")


def _points() -> torch.Tensor:
    return torch.from_numpy(build_dataset(DataParams(dataset="grid25", n_points=500)).x)


def test_every_loss_starts_from_the_same_networks_and_measures_a_gradient() -> None:
    rows = gradient_probe(_points(), MODEL, TRAIN, ["cd", "hinge", "bce"], [0, 3, 6])
    assert [(r["loss"], r["critic_steps"]) for r in rows] == [(n, s) for n in ("cd", "hinge", "bce") for s in (0, 3, 6)]
    assert all(r["grad_norm_g"] > 0 for r in rows)
    # cd and hinge share the generator loss mean(E(G(z))): untrained, their gradients are identical
    assert rows[0]["grad_norm_g"] == rows[3]["grad_norm_g"]
    # training the energy net changes what the generator is told
    assert rows[0]["grad_norm_g"] != rows[2]["grad_norm_g"]
    assert "loss_e" in rows[1] and "loss_e" not in rows[0]


def test_probe_stage_writes_csv_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = parse_params(tiny_raw(data={"dataset": "grid25", "n_points": 300}))
    prepare(params, Paths())
    result = probe(params, Paths(), ["cd", "lsgan"], [0, 2], tmp_path / "reports")
    assert result.csv.read_text().splitlines()[0].startswith("loss,critic_steps,grad_norm_g")
    assert len(result.csv.read_text().splitlines()) == 1 + 2 * 2
    assert result.png.read_bytes()[:4] == b"\x89PNG"


def test_probe_refuses_unknown_losses(tmp_path: Path) -> None:
    with pytest.raises(CdganError, match="--losses kl"):
        probe(parse_params(tiny_raw()), Paths(tmp_path), ["cd", "kl"], [0], tmp_path)
