"""WindowTripletDataset: (z_t, z_{t+1}, z_aug_t) triplets that never cross a record boundary or gap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset


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


class WindowTripletDataset(Dataset):
    """Triplets (z_t, z_{t+1}, z_aug_t) over memmapped embeddings, restricted to one split.

    z, z_aug: float32[M, 512] (memmaps are fine: rows are gathered on demand, never loaded whole).
    index: M rows with record_id, segment_idx, split. `batch(ids)` gathers many triplets at once,
    which is what the trainer uses; `__getitem__` serves torch DataLoader users.
    """

    def __init__(self, z: np.ndarray, z_aug: np.ndarray, index: pd.DataFrame, split: str | None = "train"):
        if z.shape != z_aug.shape:
            raise ValueError(f"z {z.shape} and z_aug {z_aug.shape} must have the same shape")
        if len(index) != z.shape[0]:
            raise ValueError(f"index has {len(index)} rows but z has {z.shape[0]}")
        self.z = z
        self.z_aug = z_aug
        pairs = temporal_pairs(index)
        if split is not None:
            in_split = index["split"].to_numpy() == split
            pairs = pairs[in_split[pairs[:, 0]]]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Triplets for pair ids: three float32[B, 512] tensors (z_t, z_{t+1}, z_aug_t)."""
        rows_t, rows_t1 = self.pairs[ids, 0], self.pairs[ids, 1]
        return (
            torch.from_numpy(np.asarray(self.z[rows_t], dtype=np.float32)),
            torch.from_numpy(np.asarray(self.z[rows_t1], dtype=np.float32)),
            torch.from_numpy(np.asarray(self.z_aug[rows_t], dtype=np.float32)),
        )

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z_t, z_t1, z_aug_t = self.batch(np.array([i]))
        return z_t[0], z_t1[0], z_aug_t[0]
