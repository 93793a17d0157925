"""One cap on torch's intra-op threads and numpy's BLAS threads together."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """At most `n` threads for torch and for numpy's BLAS, restored on exit.

    Why both: a stage that runs torch and numpy side by side (training workers, evaluate's refits beside
    the scoring) oversubscribes the cores when only one of the two pools is capped, and OpenMP threads
    waiting on each other cost far more than the idle core (README, Performance). Every process with
    the same cap also does the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
