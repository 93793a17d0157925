"""One seed drives every RNG: python, numpy and torch, plus named child seeds for sub-tasks."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *names: str | int) -> int:
    """A stable 32-bit seed for a named sub-task, so adding a task never shifts another's stream."""
    digest = hashlib.sha256(":".join([str(seed), *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed python, numpy's legacy global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng(seed: int, *names: str | int) -> np.random.Generator:
    """A numpy Generator for a named sub-task of the run seeded by `seed`."""
    return np.random.default_rng(derive_seed(seed, *names))
