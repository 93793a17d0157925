"""`baselines` stage: fit PCA / ICA / NMF at every configured component count on the train split.

Each (method, n) pair is its own model, so each method traces its own (L0, EV) curve on the
leaderboard. Training rows are a seeded subsample of at most `baselines.max_train_rows` rows. Models
are written as safetensors + JSON (`RunDir.baseline`), never pickled.
"""

from __future__ import annotations

import logging

import numpy as np

from stsae.data.dataset import read_rows
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.models.baselines import make_baseline
from stsae.pipeline.contract import StageContext, StageContract
from stsae.utils.seeding import derive_seed, rng

log = logging.getLogger(__name__)


CONTRACT = StageContract(
    name="baselines", help="Fit PCA / ICA / NMF on the train split.",
    reads=("run.seed", "baselines"), upstream=("extract",), out_dir="models/baselines")


def run(ctx: StageContext) -> None:
    cfg = ctx.config.baselines
    seed = ctx.config.run.seed
    emb = load_embeddings(ctx.run_dir)
    rows = emb.rows("train")
    if len(rows) == 0:
        raise InputDataError(f"{ctx.run_dir.index}: no rows with split == 'train'")
    if len(rows) > cfg.max_train_rows:
        rows = np.sort(rng(seed, "baselines", "subsample").choice(rows, cfg.max_train_rows, replace=False))
    z_train = np.asarray(read_rows(emb.z, rows), dtype=np.float32)  # not through the mapping: see read_rows
    log.info("fitting baselines on %d train rows", len(rows))
    for method in cfg.methods:
        for n in cfg.n_components:
            model = make_baseline(method, n, seed=derive_seed(seed, "baselines", method, n), max_iter=cfg.max_iter)
            model.fit(z_train)
            model.save(ctx.run_dir.baseline(method, n))
            log.info("baseline %s fitted %s", model.name, model.fit_info_ or "")
