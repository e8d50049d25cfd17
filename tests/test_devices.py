"""Tests for cdgan.devices: `auto` follows the hardware, `cuda` without a GPU is refused, never a fallback."""

from __future__ import annotations

import pytest
import torch

from cdgan.devices import resolve_device
from cdgan.errors import CdganError


def test_device_auto_is_cuda_when_present_and_cuda_without_gpu_is_refused() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(CdganError, match=r"train\.device=cuda"):
            resolve_device("cuda")


def test_the_refusal_names_the_params_key_it_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    with pytest.raises(
        CdganError, match=r"^evaluate\.device=cuda but no CUDA GPU is visible; use device: auto or cpu$"
    ):
        resolve_device("cuda", "evaluate.device")
