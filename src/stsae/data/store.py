"""Read the extract stage's outputs (z, z_aug memmaps + row index) with their shapes checked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from stsae.errors import InputDataError
from stsae.rundir import RunDir
from stsae.utils import io

EMBEDDING_DIM = 512
INDEX_COLUMNS = ("window_id", "patient_id", "record_id", "segment_idx", "split")


@dataclass
class Embeddings:
    """z, z_aug: float32[M, 512] read-only memmaps; index: M rows (INDEX_COLUMNS), row r ↔ z[r]."""

    z: np.ndarray
    z_aug: np.ndarray
    index: pd.DataFrame

    def rows(self, split: str) -> np.ndarray:
        """Row numbers (int64) of one split, in index order."""
        return np.flatnonzero(self.index["split"].to_numpy() == split)


def load_embeddings(run_dir: RunDir) -> Embeddings:
    """Open z.npy / z_aug.npy as memmaps (nothing loaded into RAM) and validate them against index."""
    z = io.open_memmap_rows(run_dir.z, EMBEDDING_DIM)
    z_aug = io.open_memmap_rows(run_dir.z_aug, EMBEDDING_DIM)
    index = io.read_parquet(run_dir.index)
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise InputDataError(f"{run_dir.index}: missing column(s) {missing}")
    for path, array in ((run_dir.z, z), (run_dir.z_aug, z_aug)):
        if array.shape[0] != len(index):
            raise InputDataError(
                f"{path}: has {array.shape[0]} rows but {run_dir.index.name} lists {len(index)}"
                " (extraction incomplete? rerun `stsae extract`)"
            )
    return Embeddings(z=z, z_aug=z_aug, index=index.reset_index(drop=True))


def load_heldout_augmented(run_dir: RunDir, n_rows: int) -> np.ndarray | None:
    """z_aug_heldout.npy as a float32[M, 512] memmap, or None when the run has no held-out view
    (data.augment.heldout_families empty); a file whose rows disagree with the index is an error."""
    if not run_dir.z_aug_heldout.is_file():
        return None
    array = io.open_memmap_rows(run_dir.z_aug_heldout, EMBEDDING_DIM)
    if array.shape[0] != n_rows:
        raise InputDataError(f"{run_dir.z_aug_heldout}: has {array.shape[0]} rows but {run_dir.index.name} "
                             f"lists {n_rows} (rerun `stsae extract`)")
    return array
