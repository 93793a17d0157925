"""Train-stage fixtures: a run directory holding only embeddings (extract's formats) and small grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stsae.config import Config, TrainSection
from stsae.pipeline.contract import StageContext
from stsae.rundir import RunDir
from stsae.utils import io


def embeddings_run_dir(tmp_path: Path) -> RunDir:
    """Embeddings in the extract stage's formats: 12 records of 10 windows, 8 train / 2 val / 2 test."""
    rs = np.random.default_rng(0)
    n = 120
    z = (rs.normal(size=(n, 6)) @ rs.normal(size=(6, 512)) + 5).astype(np.float32)
    run_dir = RunDir(tmp_path / "run")
    io.save_npy(run_dir.z, z)
    io.save_npy(run_dir.z_aug, (z + 0.01 * rs.normal(size=z.shape)).astype(np.float32))
    records = np.repeat(np.arange(12), 10)
    io.write_parquet(run_dir.index, pd.DataFrame({
        "window_id": np.arange(n), "patient_id": [f"p{r}" for r in records],
        "record_id": [f"r{r}" for r in records], "segment_idx": np.tile(np.arange(10), 12),
        "split": np.select([records < 8, records < 10], ["train", "val"], "test"),
    }))
    return run_dir


def config(**train: Any) -> Config:
    base = dict(d_dict=16, k=2, steps=4, batch_size=16, warmup_steps=1, eval_every=2, checkpoint_every=2,
                seeds=[0, 1], ablations=["vanilla"], d_dict_sweep=[8, 16], div_sample=4, aux_k=4)
    return Config(train=TrainSection(**{**base, **train}))


def ctx(run_dir: RunDir, config: Config, force: bool = False, embeddings: str = "emb-A") -> StageContext:
    return StageContext(config, run_dir, fingerprint="test", force=force, upstream={"extract": embeddings})
