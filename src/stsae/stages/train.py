"""`stsae train`: train the ST-SAE grid (full, ablations, K-sweep, seeds) into models/.

Resumable at two levels: finished models (complete JSON sidecar with matching settings and embeddings)
are skipped, and an interrupted model resumes from its training-state checkpoint in models/checkpoints/
(kept out of models/ itself so no reader can mistake it for a finished model) when that checkpoint was
written on the same embeddings with the same settings. Every other model file in models/ (another grid,
config or embeddings) is moved into models/stale/ first, so models/ holds only the current grid and every
reader (registry, evaluate, age, ground, report) sees nothing else.

The models of one K train together as one batched model (train.fused_grid; each gets exactly the weights
it would get alone), with one training-state checkpoint per group. Under torchrun every rank trains each
group together (DDP, gloo on CPU); rank 0 writes the files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import torch

from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.pipeline.contract import StageContext, StageContract
from stsae.rundir import RunDir
from stsae.train.grid import GridEntry, build_grid, expected_sidecar, is_finished, main_entry, select
from stsae.train.trainer import Member, fit_group
from stsae.utils import io
from stsae.utils.device import device_facts, resolve_device
from stsae.utils.dist import is_main_process, process_group, world_size

log = logging.getLogger(__name__)

FUSED_LATENTS = 8192  # latents (M·K) per fused group: 64 models at K=128, 2 at K=4096, K=8192 alone


CONTRACT = StageContract(
    name="train", help="Train the ST-SAE grid: full, five ablations, K-sweep, seeds.",
    reads=("train",), upstream=("extract",), out_dir="models", scratch=("checkpoints", "stale"))


def set_aside_stale(run_dir: RunDir, current: set[str]) -> list[str]:
    """Move every ST-SAE model file of models/ whose stem is not in `current` into models/stale/.

    Kept, not deleted (an earlier grid may be worth a look), but out of every reader's sight.
    Returns the stems moved.
    """
    moved = []
    for weights in sorted(run_dir.models_dir.glob("stsae-*.safetensors")):
        if weights.stem in current:
            continue
        run_dir.stale_models_dir.mkdir(parents=True, exist_ok=True)
        for path in (weights, weights.with_suffix(".json")):
            if path.exists():
                os.replace(path, run_dir.stale_models_dir / path.name)
        moved.append(weights.stem)
    if moved:
        log.info("train: moved %d stale model(s) into %s: %s", len(moved), run_dir.stale_models_dir,
                 ", ".join(moved))
    return moved


def _groups(entries: list[GridEntry], fused: bool) -> list[list[GridEntry]]:
    """Entries to train together: those of one K (train.fused_grid), at most FUSED_LATENTS // K per group,
    else one per group. Fusing shares per-op overhead among small models (how much that saves depends on
    the machine: README, Performance); at large K a step is GEMM-bound and a group's memory (weights, Adam
    moments, [M, 3B, K] codes) grows with M·K, so large dictionaries train in small groups or alone.
    Grouping never changes a model's weights."""
    if not fused:
        return [[entry] for entry in entries]
    by_size: dict[int, list[GridEntry]] = {}
    for entry in entries:
        by_size.setdefault(entry.d_dict, []).append(entry)
    groups = []
    for size, members in by_size.items():
        per_group = max(1, FUSED_LATENTS // size)
        groups += [members[start:start + per_group] for start in range(0, len(members), per_group)]
    return groups


def _train_group(ctx: StageContext, group: list[GridEntry],
                 data: tuple[WindowTripletDataset, WindowTripletDataset], embeddings: str | None,
                 device: torch.device) -> list[str]:
    """Train (or resume) one group of models of one K together and, on rank 0, save each with its
    sidecar; returns their stems. The group's training state is one checkpoint named after its first
    model (a group of other members never resumes it: its settings list the members)."""
    cfg, (train, val) = ctx.config.train, data
    paths = [ctx.run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed) for entry in group]
    state = ctx.run_dir.train_checkpoints_dir / paths[0].name
    if ctx.force and is_main_process():
        state.unlink(missing_ok=True)
    members = [Member(entry.variant, entry.seed, train, val if len(val) else None) for entry in group]
    results = fit_group(members, cfg, group[0].d_dict, checkpoint=state, embeddings=embeddings, device=device)
    if is_main_process():
        for entry, path, (model, metrics) in zip(group, paths, results, strict=True):
            model.save(path, {**expected_sidecar(entry, cfg, embeddings), "metrics": metrics})
            sidecar = path.with_suffix(".json")
            io.write_json(sidecar, {**io.read_json(sidecar), "weights_sha256": io.file_sha256(path)})
        state.unlink(missing_ok=True)
    return [path.stem for path in paths]


def run(ctx: StageContext, only: Sequence[str] = ()) -> None:
    """Train every grid model not already finished on these embeddings (only: a `--only` filter)."""
    with process_group():
        _train_grid(ctx, only)


def _train_grid(ctx: StageContext, only: Sequence[str]) -> None:
    cfg = ctx.config.train
    device = resolve_device(cfg.device, "train.device")
    emb = load_embeddings(ctx.run_dir)
    train = WindowTripletDataset(emb.z, emb.z_aug, emb.index, "train")
    val = WindowTripletDataset(emb.z, emb.z_aug, emb.index, "val")
    if len(train) == 0:
        raise InputDataError(f"{ctx.run_dir.index}: the train split has no consecutive window pairs")
    embeddings = ctx.upstream.get("extract")
    grid = build_grid(cfg)
    entries = select(grid, list(only))
    log.info("train: %d model(s) in the grid selection, %d train / %d val triplets",
             len(entries), len(train), len(val))
    paths = {entry: ctx.run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed) for entry in grid}
    finished = {entry for entry, path in paths.items() if is_finished(path, entry, cfg, embeddings)}
    # a grid model finished under other settings or embeddings is stale; one without a sidecar (a save cut
    # short) is simply unfinished and will be overwritten
    outdated = {e for e, path in paths.items() if e not in finished and path.with_suffix(".json").is_file()}
    current = {paths[e].stem for e in grid if e not in outdated}
    stale = set_aside_stale(ctx.run_dir, current) if is_main_process() else []
    todo = [entry for entry in entries if ctx.force or entry not in finished]
    skipped = [paths[entry].stem for entry in entries if entry not in todo]
    for stem in skipped:
        log.info("%s: finished on these embeddings with matching settings, skipped", stem)
    groups = _groups(todo, cfg.fused_grid)
    trained: list[str] = []
    t0 = time.perf_counter()
    for group in groups:
        trained += _train_group(ctx, group, (train, val), embeddings, device)
    if not is_main_process():
        return
    checkpoints = ctx.run_dir.train_checkpoints_dir
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    main = paths[main_entry(cfg)].stem
    stats = _input_stats(ctx.run_dir, [main, *trained])
    ctx.record("train", {
        "main_model": main, "embeddings": embeddings, "models_trained": trained, "models_skipped": skipped,
        "models_set_aside": stale, "seconds": round(time.perf_counter() - t0, 1), "world_size": world_size(),
        "fused_groups": [len(group) for group in groups],
        **stats,
    })
    ctx.record("devices", {"train": device_facts(device)})


def _input_stats(run_dir: RunDir, stems: list[str]) -> dict[str, float]:
    """‖μ‖/‖σ‖ and effective rank of the train inputs, from the first of `stems` (main model first) whose
    sidecar exists: a property of the embeddings that every model measures on its train-row sample."""
    for stem in stems:
        sidecar = run_dir.models_dir / f"{stem}.json"
        if sidecar.is_file():
            info = io.read_json(sidecar)
            return {key: info[key] for key in ("input_mean_norm_over_std", "effective_rank") if key in info}
    return {}
