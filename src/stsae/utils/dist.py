"""torchrun awareness: rank and world size from the environment torchrun sets, and the one process group
every multi-rank stage joins (prepare's gathers, extract's barriers, train's barriers and DDP all-reduces).

The group's backend follows the stage's device: NCCL for CUDA tensors (gloo would copy every
all-reduce through host memory, and NCCL cannot take CPU tensors), gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as torch_dist

_CPU = torch.device("cpu")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int | None:
    """torchrun's LOCAL_RANK (this process's index on its host), or None outside torchrun."""
    value = os.environ.get("LOCAL_RANK")
    return None if value is None else int(value)


def is_main_process() -> bool:
    """Only rank 0 writes shared files (stage records, manifest); every rank writes its own rows."""
    return rank() == 0


def group_world() -> tuple[int, int]:
    """(world size, rank) of the initialised process group, or (1, 0) outside one (e.g. evaluate's refits)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size(), torch_dist.get_rank()
    return 1, 0


def backend_for(device: torch.device) -> str:
    """The collective backend for tensors on `device`: "nccl" on CUDA, "gloo" on the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def barrier() -> None:
    """Wait until every rank of the group got here; nothing to wait for outside a group."""
    if group_world()[0] > 1:
        torch_dist.barrier()


@contextlib.contextmanager
def process_group(device: torch.device = _CPU, timeout: timedelta | None = None) -> Iterator[None]:
    """Join torchrun's group with the backend of `device` (see `backend_for`) when launched with several
    ranks, and leave it afterwards if this call joined it; a single process gets no group.

    On CUDA the rank's GPU is made current and bound to the group (`device_id`), so NCCL's barrier and
    object collectives use that GPU, not cuda:0 on every rank. timeout: how long a collective may wait
    for the slowest rank (torch's default when None: 30 min for gloo, 10 min for NCCL).
    """
    created = world_size() > 1 and not torch_dist.is_initialized()
    if created:
        options: dict[str, object] = {} if timeout is None else {"timeout": timeout}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            options["device_id"] = device
        torch_dist.init_process_group(backend_for(device), **options)
    try:
        yield
    finally:
        if created:
            torch_dist.destroy_process_group()
