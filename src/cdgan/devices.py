"""The one device resolver: `device: auto | cpu | cuda` of any params section to a torch device."""

from __future__ import annotations

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
