"""The one device resolver (`device: auto | cpu | cuda` of any params section to a torch device), and the
hardware a run's figures depend on."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from cdgan.errors import CdganError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` is CUDA when present, else CPU; `cuda` without a GPU is an error naming the params key `key`,
    never a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CdganError(f"{key}=cuda but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


def compute_tags() -> dict[str, str]:
    """What a run's floats depend on besides code, params and seeds: a seed repeats a run bitwise only on the same
    torch build and CPU kernel set. ATen picks its vector kernels by the CPU (`ATEN_CPU_CAPABILITY` forces a
    set), and the default digits run of seed 0 scores fid 4.275 with AVX2 kernels, 3.975 with the portable ones
    on the same host (README, "Models: defaults and quality targets")."""
    tags = {
        "host.torch": torch.__version__,
        "host.cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "host.cpu_model": cpu_model(),
        "host.torch_threads": str(torch.get_num_threads()),
    }
    if torch.cuda.is_available():
        tags["host.cuda_device"] = torch.cuda.get_device_name()
    return tags


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows ("unknown" when nothing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or "unknown"
