"""WindowTripletDataset: (z_t, z_{t+1}, z_aug_t) triplets that never cross a record boundary or gap."""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from stsae.errors import InputDataError


def temporal_pairs(index: pd.DataFrame) -> np.ndarray:
    """Rows (r, s) of `index` where s is the window right after r in the same record.

    index: needs record_id and segment_idx (the window's position in its gap-free record). Windows
    dropped by QC break the chain, so a pair is always two truly consecutive 10 s windows.
    Returns int64[P, 2].
    """
    frame = pd.DataFrame({
        "row": np.arange(len(index), dtype=np.int64),
        "record_id": index["record_id"].to_numpy(),
        "segment_idx": index["segment_idx"].to_numpy(dtype=np.int64),
    })
    successor = frame.assign(segment_idx=frame["segment_idx"] - 1)
    merged = frame.merge(successor, on=["record_id", "segment_idx"], suffixes=("_t", "_t1"))
    pairs = merged[["row_t", "row_t1"]].to_numpy(dtype=np.int64)
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


class MemmapRows:
    """Random rows of a whole `.npy` memmap read with positioned reads, never through its mapping.

    Why: fancy-indexing a memmap faults in the touched pages (and, by the kernel's fault-around, their
    neighbours), and they stay mapped, so random training batches grow the process's RSS towards the
    file size (3.6 GiB for the train stage at 1M windows). `os.preadv` copies the rows into a fresh
    array instead: the file's pages live only in the shared page cache, and RSS stays at one batch.
    The bytes are the ones the memmap would return. Consecutive rows (a window and its successor) are
    read in one call.
    """

    def __init__(self, array: np.memmap):
        if not self.applies(array):
            raise ValueError("MemmapRows needs a whole C-contiguous 2-D memmap (np.load(..., mmap_mode='r'))")
        self.path = str(array.filename)
        self.shape: tuple[int, int] = array.shape
        self.dtype = array.dtype
        self.offset = int(array.offset)
        self.row_bytes = array.shape[1] * array.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    @staticmethod
    def applies(array: np.ndarray) -> bool:
        """True for the memmap np.load returns: its buffer is the file mapping itself, so `offset` is
        row 0's byte position (a slice of it shares `offset` but starts elsewhere, so it is refused)."""
        return (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.ndim == 2
                and array.flags.c_contiguous and bool(array.filename))

    def read(self, rows: np.ndarray) -> np.ndarray:
        """rows: int[B] in [0, N) -> array[rows] as a new dtype[B, D] array (rows may repeat)."""
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"{self.path}: row ids must lie in [0, {self.shape[0]})")
        if rows.size == 0:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        unique, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((unique.size, self.shape[1]), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        for start, stop in zip(np.r_[0, breaks].tolist(), np.r_[breaks, unique.size].tolist(), strict=True):
            self._read_run(out[start:stop], int(unique[start]))
        return out[inverse]

    def read_all(self) -> np.ndarray:
        """The whole array in one positioned read (one copy in memory, no mapped pages)."""
        out = np.empty(self.shape, dtype=self.dtype)
        if out.size:
            self._read_run(out, 0)
        return out

    def _read_run(self, out: np.ndarray, first_row: int) -> None:
        """Fill `out` (consecutive rows from `first_row`) with one positioned read."""
        span = memoryview(out).cast("B")
        got = os.preadv(self._fd, [span], self.offset + first_row * self.row_bytes)
        if got != len(span):
            raise InputDataError(f"{self.path}: ends before row {first_row} of {self.shape[0]} "
                                 "(file truncated since it was opened? rerun the stage that writes it)")


IN_MEMORY_MAX_BYTES = 256 * 2**20


def row_gatherer(array: np.ndarray, in_memory_max_bytes: int = IN_MEMORY_MAX_BYTES,
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """rows -> array[rows]: for a whole `.npy` memmap, positioned reads, or, when it is at most
    `in_memory_max_bytes`, one positioned read of the whole file into memory; plain indexing for anything
    else (in-memory arrays, slices of a memmap).

    Why copy small files: a few hundred MiB are cheap to hold, while one read call per run of rows costs
    milliseconds per batch, more than a whole training step at small K."""
    if not MemmapRows.applies(array):
        return array.__getitem__
    reader = MemmapRows(array)
    if array.nbytes <= in_memory_max_bytes:
        return reader.read_all().__getitem__
    return reader.read


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] read once: positioned reads for a whole `.npy` memmap, whatever its size (its pages
    do not stay in this process), plain indexing for anything else. Unlike `row_gatherer`, never reads
    a small file whole: a one-off subsample needs only its rows."""
    return row_gatherer(array, in_memory_max_bytes=0)(rows)


class WindowTripletDataset(Dataset):
    """Triplets (z_t, z_{t+1}, z_aug_t) over memmapped embeddings, restricted to one split.

    z, z_aug: float32[M, 512] (memmaps are fine: rows are gathered on demand, never loaded whole, and
    read with `MemmapRows` so random batches do not keep the files' pages resident; files of at most
    `in_memory_max_bytes` are read into memory once instead).
    index: M rows with record_id, segment_idx, split. `batch(ids)` gathers many triplets at once,
    which is what the trainer uses; `__getitem__` serves torch DataLoader users.
    """

    def __init__(self, z: np.ndarray, z_aug: np.ndarray, index: pd.DataFrame, split: str | None = "train",
                 in_memory_max_bytes: int = IN_MEMORY_MAX_BYTES):
        if z.shape != z_aug.shape:
            raise ValueError(f"z {z.shape} and z_aug {z_aug.shape} must have the same shape")
        if len(index) != z.shape[0]:
            raise ValueError(f"index has {len(index)} rows but z has {z.shape[0]}")
        self.z = z
        self.z_aug = z_aug
        self._gather_z = row_gatherer(z, in_memory_max_bytes)
        self._gather_z_aug = row_gatherer(z_aug, in_memory_max_bytes)
        pairs = temporal_pairs(index)
        if split is not None:
            in_split = index["split"].to_numpy() == split
            pairs = pairs[in_split[pairs[:, 0]]]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def windows(self, rows: np.ndarray) -> np.ndarray:
        """float32[len(rows), 512] rows of z by row id (not pair id), read like the batches."""
        return np.asarray(self._gather_z(rows), dtype=np.float32)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Triplets for pair ids: three float32[B, 512] tensors (z_t, z_{t+1}, z_aug_t).

        z_t and z_{t+1} are read together, so a window and its successor cost one read."""
        rows_t, rows_t1 = self.pairs[ids, 0], self.pairs[ids, 1]
        z_both = np.asarray(self._gather_z(np.concatenate([rows_t, rows_t1])), dtype=np.float32)
        z_aug_t = np.asarray(self._gather_z_aug(rows_t), dtype=np.float32)
        return (torch.from_numpy(z_both[:len(rows_t)]), torch.from_numpy(z_both[len(rows_t):]),
                torch.from_numpy(z_aug_t))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_t, z_t1, z_aug_t = self.batch(np.array([i]))
        return z_t[0], z_t1[0], z_aug_t[0]
