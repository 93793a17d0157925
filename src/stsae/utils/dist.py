"""torchrun awareness: rank and world size from the environment torchrun sets, and the one gloo process
group every multi-rank stage joins (extract's barriers, train's DDP all-reduces)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch.distributed as torch_dist


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


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join torchrun's gloo group (CPU tensors) when launched with several ranks, and leave it afterwards
    if this call joined it; a single process gets no group."""
    created = world_size() > 1 and not torch_dist.is_initialized()
    if created:
        torch_dist.init_process_group("gloo")
    try:
        yield
    finally:
        if created:
            torch_dist.destroy_process_group()
