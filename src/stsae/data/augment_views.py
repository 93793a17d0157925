"""How extraction makes a chunk's augmented views (z_aug's windows and z_aug_heldout's) and where.

Why a plan: the same views can be made three ways, and the loader thread, the augmentation workers and
the encoding loop must agree on which. `extract.augment_on` and `extract.augment_draws` choose:
  cpu             numpy on the host (loader thread or workers): the reference bytes;
  device + host   the host only draws (`augment.window_draws`); the device does the arithmetic in float64
                  (`augment_torch.augment_tensor`): windows within 1 float32 ulp of the reference;
  device + philox the device draws too (`philox.philox_draws`): no host work, another random stream.
Each view is made from its own (seed, families) recipe, so row i of every view depends on window i alone.

Which rows: z_aug covers every window (L_stab trains on train rows, validation and the consistency metrics
read the others). z_aug_heldout covers only the windows of `HELDOUT_SPLITS`: the evaluation's held-out
consistency and the dashboard read test windows alone, so encoding the train and validation windows under
the held-out families (four fifths of the view, a quarter of the demo's extraction) bought nothing. Its
other rows are NaN, so a reader that strays outside the test split fails loudly instead of using zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from stsae.config import AugmentSection
from stsae.data.augment import augment_windows, window_draws
from stsae.data.augment_torch import augment_tensor
from stsae.data.philox import N_SCALARS, philox_draws
from stsae.errors import StsaeError
from stsae.utils.seeding import derive_seed

AugmentOn = Literal["cpu", "device"]
AugmentDraws = Literal["host", "philox"]
HELDOUT_SPLITS = ("test",)  # the splits whose windows z_aug_heldout encodes (module docstring)


def resolve_augment_on(requested: Literal["auto", "cpu", "device"], device: torch.device,
                       draws: AugmentDraws = "host") -> AugmentOn:
    """Resolve `extract.augment_on`: auto is the device on CUDA (the host's numpy arithmetic would cap the
    loader at a few thousand windows/s per core) and the CPU elsewhere (the reference bytes). Device-side
    `philox` draws feed only the device arithmetic, so with a CPU result they are refused naming both keys."""
    resolved: AugmentOn = requested if requested != "auto" else "device" if device.type == "cuda" else "cpu"
    if draws == "philox" and resolved == "cpu":
        raise StsaeError(f"extract.augment_draws: philox draws on the device, but extract.augment_on "
                         f"({requested}) resolved to cpu on {device}; set extract.augment_on: device, or "
                         "extract.augment_draws: host")
    return resolved


@dataclass(frozen=True)
class ViewPlan:
    """The augmented views of extraction (z_aug, then z_aug_heldout when configured) and where they are made.

    A chunk goes through two steps: `on_host` (loader thread; or `worker_job` on the workers' share of
    the rows) returns what the loader buffers hold after the clean windows, per `layout`; `encoder_inputs`
    turns the loaded buffers into the windows the encoder takes, float32[n_v, L] each. Both take the
    chunk's window ids and `heldout`, bool[n]: the rows the held-out view covers (`HELDOUT_SPLITS`); view v
    holds the rows `view_rows` selects, in chunk order."""

    augment: AugmentSection
    fs: float
    seed: int
    length: int
    on: AugmentOn = "cpu"
    draws: AugmentDraws = "host"

    @property
    def recipes(self) -> list[tuple[int, list[str]]]:
        """(seed, families) of each view: z_aug (stability families) and, when configured, z_aug_heldout
        (held-out families, own seed)."""
        recipes = [(self.seed, list(self.augment.stability_families))]
        if self.augment.heldout_families:
            recipes.append((derive_seed(self.seed, "heldout"), list(self.augment.heldout_families)))
        return recipes

    @property
    def host_work(self) -> bool:
        """Whether the host computes anything per row (not with device-side philox draws)."""
        return self.draws == "host"

    def layout(self) -> list[tuple[int, torch.dtype]]:
        """The loader buffers' (row length, dtype) per slot: clean windows first, then per view its windows
        (cpu), its draws u and noise (device, host draws) or nothing (philox)."""
        if self.on == "cpu":
            per_view = [(self.length, torch.float32)]
        else:
            per_view = [(N_SCALARS, torch.float64), (self.length, torch.float64)] if self.host_work else []
        return [(self.length, torch.float32)] + per_view * len(self.recipes)

    def view_rows(self, heldout: np.ndarray) -> list[np.ndarray]:
        """int64 positions in the chunk of each view's rows, in view order: all of them for z_aug, the
        `heldout` ones (bool[n]) for z_aug_heldout when the plan makes it."""
        return [np.arange(len(heldout)), np.flatnonzero(heldout)][:len(self.recipes)]

    def on_host(self, clean: np.ndarray, ids: np.ndarray, heldout: np.ndarray) -> list[np.ndarray]:
        """The host's share for rows `ids` (windows `clean` float32[n, L]): each view's windows (cpu) or
        draws u float64[n_v, 9], noise float64[n_v, L] (device), in view order; nothing with philox draws."""
        views = list(zip(self.recipes, self.view_rows(heldout), strict=True))
        if self.on == "cpu":
            return [augment_windows(clean[rows], self.fs, self.augment, view_seed, ids[rows], families)
                    for (view_seed, families), rows in views]
        if not self.host_work:
            return []
        return [draw for (view_seed, _), rows in views for draw in window_draws(view_seed, ids[rows], self.length)]

    def worker_job(self, windows_path: Path) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
        """`on_host` as a picklable job of (row ids, held-out mask): a worker reads its rows of windows.npy
        itself, so no windows are pickled to it."""
        return _WorkerJob(self, windows_path)

    def encoder_inputs(self, loaded: list[torch.Tensor], ids: np.ndarray, heldout: np.ndarray,
                       device: torch.device) -> list[torch.Tensor]:
        """Loaded buffers → [clean, view windows …] for the encoder. cpu: unchanged (the encoder copies them).
        device: the clean windows and the draws are copied (asynchronously from pinned buffers; the
        encoder's copy of its results back syncs them before the loader reuses a buffer), or the draws
        made on the device, and each view is augmented there."""
        if self.on == "cpu":
            return loaded
        clean = loaded[0].to(device, non_blocking=True)
        host_draws = iter(loaded[1:])
        views = [clean]
        for (view_seed, families), rows in zip(self.recipes, self.view_rows(heldout), strict=True):
            if self.host_work:
                u, noise = (next(host_draws).to(device, non_blocking=True) for _ in range(2))
            if len(rows) == 0:  # a chunk without test windows: nothing to draw or augment for the held-out view
                views.append(clean[:0])
                continue
            if not self.host_work:
                u, noise = philox_draws(view_seed, torch.from_numpy(ids[rows]).to(device), self.length)
            view_clean = clean if len(rows) == len(ids) else clean[torch.from_numpy(rows).to(device)]
            views.append(augment_tensor(view_clean, u, noise, self.fs, self.augment, families))
        return views


@dataclass(frozen=True)
class _WorkerJob:
    """`ViewPlan.on_host` of some rows of windows.npy, run in an augmentation worker."""

    plan: ViewPlan
    windows_path: Path

    def __call__(self, ids: np.ndarray, heldout: np.ndarray) -> list[np.ndarray]:
        windows = np.load(self.windows_path, mmap_mode="r")
        return self.plan.on_host(np.ascontiguousarray(windows[ids], dtype=np.float32), ids, heldout)
