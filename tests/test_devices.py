"""Tests for cdgan.devices: `auto` follows the hardware, `cuda` without a GPU is refused, never a fallback; the
compute tags name the kernels a run used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from cdgan.devices import compute_tags, resolve_device
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


def test_compute_tags_name_the_cpu_kernels_the_process_runs_on() -> None:
    tags = compute_tags()
    assert tags["host.torch"] == torch.__version__ and tags["host.cpu_model"]
    assert tags["host.torch_threads"] == str(torch.get_num_threads())
    # ATen's kernel set, forced down to its portable one: the tag follows what the process runs, not the CPU
    forced = subprocess.run(
        [sys.executable, "-c", "from cdgan.devices import compute_tags; print(compute_tags()['host.cpu_capability'])"],
        env=os.environ | {"ATEN_CPU_CAPABILITY": "default"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.strip() == "DEFAULT"
