"""torchrun awareness: rank and world size from the environment torchrun sets."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only rank 0 writes shared files (stage records, manifest); every rank writes its own rows."""
    return rank() == 0
