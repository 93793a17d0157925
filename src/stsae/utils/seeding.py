"""One seed drives every RNG: named child seeds for sub-tasks, so adding a task never shifts another's stream."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *names: str | int) -> int:
    """A stable 32-bit seed for a named sub-task, so adding a task never shifts another's stream."""
    digest = hashlib.sha256(":".join([str(seed), *map(str, names)]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rng(seed: int, *names: str | int) -> np.random.Generator:
    """A numpy Generator for a named sub-task of the run seeded by `seed`."""
    return np.random.default_rng(derive_seed(seed, *names))
