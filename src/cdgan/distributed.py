"""Data-parallel training under torchrun: the process group, this process's rank and share, gradient averaging.

Every rank draws the whole global batch of random numbers from the shared seeded generator and keeps its own
rows (`share`), and gradients are averaged after each backward, so N ranks train the single-process model up
to float rounding. One exception: BatchNorm in conv generators on the CPU, which sees each rank's share
(SyncBatchNorm has CUDA kernels only).
Outside torchrun every function here is the identity, a no-op or rank 0 of 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")  # set by torchrun for each process it starts


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) for the block; yields this process's device.

    On CUDA each process takes the GPU cuda:LOCAL_RANK of its node. A process not started by torchrun
    runs alone on `device`.
    """
    if not all(name in os.environ for name in LAUNCH_VARS):
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one process that resumes, tracks, shows progress and writes files."""
    return rank() == 0


def share(x: Tensor) -> Tensor:
    """This rank's rows of a global-batch tensor that every rank drew alike: (B, ...) -> (B / world, ...)."""
    n = len(x) // world_size()
    return x[rank() * n : (rank() + 1) * n]


def gather_shares(x: Tensor) -> Tensor:
    """Every rank's `share` put back together in rank order: (B / world, ...) -> (B, ...), on every rank."""
    if world_size() == 1:
        return x
    shares = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(shares, x.contiguous())
    return torch.cat(shares)


def average_gradients(net: nn.Module) -> None:
    """Replace each rank's gradients by their mean over the ranks: the gradient of the global batch's
    mean loss, as every loss here is a mean over equal shares. One all-reduce of one flat buffer."""
    if world_size() == 1:
        return
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(mean.view_as(grad))


def mean_values(values: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors averaged over the ranks, as host floats: one all-reduce and one host sync."""
    stacked = torch.stack([v.float() for v in values.values()])
    if world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` on every rank (pickled; for small things such as a loaded checkpoint or a result)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
