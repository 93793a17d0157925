"""`stsae train`: train the ST-SAE grid (full, ablations, K-sweep, seeds) into models/.

Resumable at two levels: finished models (complete JSON sidecar with matching settings) are skipped,
and an interrupted model resumes from its training-state checkpoint in models/checkpoints/ (kept
out of models/ itself so no reader can mistake it for a finished model). Under torchrun every rank
trains each model together (DDP, gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import logging
import time

import torch.distributed as dist

from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.pipeline.runner import StageContext
from stsae.train.grid import build_grid, expected_sidecar, is_finished, select
from stsae.train.trainer import fit_stsae
from stsae.utils.dist import is_main_process, world_size

log = logging.getLogger(__name__)


def _ensure_process_group() -> None:
    """Join torchrun's process group (gloo: CPU tensors) when launched with several ranks."""
    if world_size() > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def run(ctx: StageContext) -> None:
    cfg = ctx.config.train
    _ensure_process_group()
    emb = load_embeddings(ctx.run_dir)
    train = WindowTripletDataset(emb.z, emb.z_aug, emb.index, "train")
    val = WindowTripletDataset(emb.z, emb.z_aug, emb.index, "val")
    if len(train) == 0:
        raise InputDataError(f"{ctx.run_dir.index}: the train split has no consecutive window pairs")
    entries = select(build_grid(cfg), ctx.only)
    log.info("train: %d model(s) in the grid selection, %d train / %d val triplets",
             len(entries), len(train), len(val))
    checkpoints = ctx.run_dir.train_checkpoints_dir
    trained, skipped = [], []
    t0 = time.perf_counter()
    for entry in entries:
        path = ctx.run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed)
        if not ctx.force and is_finished(path, entry, cfg):
            skipped.append(path.stem)
            log.info("%s: finished with matching settings, skipped", path.stem)
            continue
        state = checkpoints / path.name
        if ctx.force and is_main_process():
            state.unlink(missing_ok=True)
        model, metrics = fit_stsae(train, val if len(val) else None, cfg, entry.variant, entry.d_dict,
                                   entry.seed, checkpoint=state)
        if is_main_process():
            model.save(path, {**expected_sidecar(entry, cfg), "metrics": metrics})
            state.unlink(missing_ok=True)
        trained.append(path.stem)
    if not is_main_process():
        return
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    stats = model.stats if trained else None
    ctx.record("train", {
        "models_trained": trained, "models_skipped": skipped, "seconds": round(time.perf_counter() - t0, 1),
        "world_size": world_size(),
        **({"input_mean_norm_over_std": stats.mean_norm_over_std, "effective_rank": stats.effective_rank}
           if stats is not None else {}),
    })
