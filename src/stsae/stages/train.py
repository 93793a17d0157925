"""`stsae train`: train the ST-SAE grid (full, ablations, K-sweep, seeds) into models/.

Resumable at two levels: finished models (complete JSON sidecar with matching settings and embeddings)
are skipped, and an interrupted model resumes from its training-state checkpoint in models/checkpoints/
(kept out of models/ itself so no reader can mistake it for a finished model) when that checkpoint was
written on the same embeddings with the same settings. Every other model file in models/ (another grid,
config or embeddings) is moved into models/stale/ first, so models/ holds only the current grid and every
reader (registry, evaluate, age, ground, report) sees nothing else.

The models of one K that read the same triplet parts train together as one batched model
(train.fused_grid; each gets exactly the weights it would get alone), with one training-state checkpoint
per group. Under torchrun (W ranks, NCCL on CUDA, gloo on CPU) train.parallel decides the split: `grid`
(default) deals the models into W shares of about equal work, each rank trains and saves its own share
alone (the models are independent, so no step waits on another rank and every file is byte-identical to
a one-process run) and rank 0 records the stage once all are saved; `ddp` trains each group on all
ranks, each taking a slice of every batch (useful only when there are fewer models than ranks), rank 0
writing the files. One process on the CPU deals the grid the same way over train.workers local worker
processes."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

import torch
from threadpoolctl import threadpool_limits

from stsae.config import TrainSection
from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.models.encoder_runtime import usable_cores
from stsae.pipeline.contract import StageContext, StageContract
from stsae.rundir import RunDir
from stsae.train.grid import (
    GridEntry,
    build_grid,
    deal,
    expected_sidecar,
    is_finished,
    main_entry,
    select,
    training_cost,
)
from stsae.train.trainer import Member, encoded_parts, fit_group
from stsae.utils import io
from stsae.utils.device import device_facts, resolve_device
from stsae.utils.dist import barrier, is_main_process, process_group, rank, world_size
from stsae.utils.logs import setup_logging
from stsae.utils.threads import limited_threads

log = logging.getLogger(__name__)

FUSED_LATENTS = 8192  # latents (M·K) per fused group: 64 models at K=128, 2 at K=4096, K=8192 alone
# How long a rank that finished its grid share waits at the barrier for the slowest one (torch's default
# would stop a long grid after 30 min on gloo, 10 on NCCL). A rank that fails does not leave the others
# hanging that long: torchrun's agent stops every rank when one exits with an error.
GRID_WAIT = timedelta(hours=24)


CONTRACT = StageContract(
    name="train", help="Train the ST-SAE grid: full, five ablations, K-sweep, seeds.",
    reads=("train",), upstream=("extract",), out_dir="models", scratch=("checkpoints", "stale"),
    multi_rank=True)


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


def _groups(entries: list[GridEntry], cfg: TrainSection) -> list[list[GridEntry]]:
    """Entries to train together: those of one K reading the same triplet parts (train.fused_grid), at most
    FUSED_LATENTS // K per group, else one per group. Fusing shares per-op overhead among small models
    (how much that saves depends on the machine: README, Performance), but a group encodes every part any
    member reads for all its members (`encoded_parts`), so a vanilla model (z_t only) is not fused with
    `full` ones (three parts). At large K a step is GEMM-bound and a group's memory (weights, Adam moments,
    [M, 3B, K] codes) grows with M·K, so large dictionaries train in small groups or alone. Grouping never
    changes a model's weights."""
    if not cfg.fused_grid:
        return [[entry] for entry in entries]
    fusable: dict[tuple[int, tuple[str, ...]], list[GridEntry]] = {}
    for entry in entries:
        fusable.setdefault((entry.d_dict, encoded_parts(cfg, entry.variant)), []).append(entry)
    groups = []
    for (size, _), members in fusable.items():
        per_group = max(1, FUSED_LATENTS // size)
        groups += [members[start:start + per_group] for start in range(0, len(members), per_group)]
    return groups


@dataclass(frozen=True)
class Schedule:
    """Who trains which models: the groups of each share, in training order.

    grid (torchrun, train.parallel=grid): one share per rank (`deal`), trained alone by that rank, which
    saves its own models. workers (one process, train.workers > 1): one share per local worker process,
    likewise. ddp (torchrun, train.parallel=ddp) and none (one process): a single share that every rank
    trains together, rank 0 saving the files.
    """

    parallel: Literal["grid", "workers", "ddp", "none"]
    shares: list[list[list[GridEntry]]]

    @property
    def saves_own_models(self) -> bool:
        """Whether this rank saves what it trains (in ddp only rank 0 does: every rank holds the same models)."""
        return self.parallel != "ddp" or is_main_process()


def resolve_workers(requested: int | Literal["auto"], device: torch.device, world: int,
                    entries: list[GridEntry], cfg: TrainSection) -> int:
    """How many local worker processes train the grid (train.workers): 1 under torchrun (the ranks already
    split it) and on a GPU (one device, one trainer). auto: one per usable core, but no more than the
    grid's largest model lets `deal` balance (total cost / largest cost, `training_cost`), since the share
    holding it bounds the stage's time."""
    if world > 1 or device.type != "cpu" or not entries:
        return 1
    if requested != "auto":
        return requested
    costs = [training_cost(entry, cfg) for entry in entries]
    return max(1, min(usable_cores(), sum(costs) // max(costs)))


def schedule(cfg: TrainSection, entries: list[GridEntry], todo: list[GridEntry], world: int,
             workers: int = 1) -> Schedule:
    """Deal the grid selection `entries` (not just `todo`) into shares, one per torchrun rank or local
    worker, so a rerun after a crash gives each the same groups and their checkpoints resume; finished
    models are then left out."""
    if world > 1 and cfg.parallel == "ddp":
        return Schedule("ddp", [_groups(todo, cfg)])
    n_shares = world if world > 1 else workers
    if n_shares == 1:
        return Schedule("none", [_groups(todo, cfg)])
    owed = set(todo)
    shares = [_groups([entry for entry in share if entry in owed], cfg) for share in deal(entries, n_shares, cfg)]
    if world > 1 and todo and not all(shares):
        log.warning("train: %d model(s) to train on %d ranks under train.parallel=grid, so some ranks idle; "
                    "train.parallel=ddp shares every model's batches instead", len(todo), world)
    return Schedule("grid" if world > 1 else "workers", shares)


@dataclass(frozen=True)
class ShareJob:
    """One process's share of the grid and what it needs to train and save it (picklable: a local worker
    receives it whole). distributed: train each group with the ranks' DDP; saves: see Schedule."""

    run_dir: RunDir
    cfg: TrainSection
    embeddings: str | None
    device: torch.device
    force: bool
    distributed: bool
    saves: bool
    groups: list[list[GridEntry]]


def _datasets(run_dir: RunDir) -> tuple[WindowTripletDataset, WindowTripletDataset]:
    """The train and val triplets of the run's embeddings (memmaps: every worker maps the same pages)."""
    emb = load_embeddings(run_dir)
    return (WindowTripletDataset(emb.z, emb.z_aug, emb.index, "train"),
            WindowTripletDataset(emb.z, emb.z_aug, emb.index, "val"))


def train_share(job: ShareJob, data: tuple[WindowTripletDataset, WindowTripletDataset] | None = None) -> None:
    """Train (or resume) every group of `job` in order on `data` (the run's train and val triplets; a
    spawned worker, given none, maps them itself)."""
    train, val = data or _datasets(job.run_dir)
    for group in job.groups:
        _train_group(job, group, train, val)


def _train_group(job: ShareJob, group: list[GridEntry], train: WindowTripletDataset,
                 val: WindowTripletDataset) -> None:
    """Train (or resume) one group of models of one K together and, where this process saves, save each
    with its sidecar. The group's training state is one checkpoint named after its first model (a group
    of other members never resumes it: its settings list the members)."""
    cfg = job.cfg
    paths = [job.run_dir.stsae_checkpoint(entry.variant, entry.d_dict, entry.seed) for entry in group]
    state = job.run_dir.train_checkpoints_dir / paths[0].name
    if job.force and job.saves:
        state.unlink(missing_ok=True)
    members = [Member(entry.variant, entry.seed, train, val if len(val) else None) for entry in group]
    results = fit_group(members, cfg, group[0].d_dict, checkpoint=state, embeddings=job.embeddings,
                        device=job.device, distributed=job.distributed)
    if not job.saves:
        return
    for entry, path, (model, metrics) in zip(group, paths, results, strict=True):
        model.save(path, {**expected_sidecar(entry, cfg, job.embeddings), "metrics": metrics})
        sidecar = path.with_suffix(".json")
        io.write_json(sidecar, {**io.read_json(sidecar), "weights_sha256": io.file_sha256(path)})
    state.unlink(missing_ok=True)


def _worker_setup(threads: int, verbosity: int, log_file: Path) -> None:
    """A spawned worker starts bare: its share of the cores, and the parent's logging (console, run.log)."""
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads, user_api="blas")
    setup_logging(verbosity, log_file)


def _train_in_workers(jobs: list[ShareJob], log_file: Path,
                      data: tuple[WindowTripletDataset, WindowTripletDataset]) -> None:
    """Train jobs[0] here and the others in spawned worker processes, the cores split evenly among them
    (one torch thread each on the demo's 2 cores): single-threaded trainers of independent shares beat
    one multi-threaded trainer on the grid's small GEMMs, and on a loaded machine by far (README,
    Performance). spawn, not fork: a fork of a process whose OpenMP threads already ran can hang."""
    threads = max(1, usable_cores() // len(jobs))  # as many as on the first run, whatever is left to train
    here, *others = [job for job in jobs if job.groups] or jobs[:1]
    level = logging.getLogger("stsae").getEffectiveLevel()
    verbosity = -1 if level > logging.INFO else 0 if level == logging.INFO else 1
    with contextlib.ExitStack() as stack:
        pending = []
        if others:
            pool = stack.enter_context(ProcessPoolExecutor(
                len(others), mp_context=multiprocessing.get_context("spawn"), initializer=_worker_setup,
                initargs=(threads, verbosity, log_file)))
            pending = [pool.submit(train_share, job) for job in others]
        with limited_threads(threads):
            train_share(here, data)
        for future in pending:
            future.result()


def run(ctx: StageContext, only: Sequence[str] = ()) -> None:
    """Train every grid model not already finished on these embeddings (only: a `--only` filter)."""
    device = resolve_device(ctx.config.train.device, "train.device")
    with process_group(device, GRID_WAIT):
        _train_grid(ctx, only, device)


def _train_grid(ctx: StageContext, only: Sequence[str], device: torch.device) -> None:
    cfg, world = ctx.config.train, world_size()
    train, val = _datasets(ctx.run_dir)
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
    barrier()  # no rank saves a model before rank 0 has moved the stale ones aside
    todo = [entry for entry in entries if ctx.force or entry not in finished]
    skipped = [paths[entry].stem for entry in entries if entry not in todo]
    for stem in skipped:
        log.info("%s: finished on these embeddings with matching settings, skipped", stem)
    plan = schedule(cfg, entries, todo, world, resolve_workers(cfg.workers, device, world, entries, cfg))
    jobs = [ShareJob(ctx.run_dir, cfg, embeddings, device, ctx.force, plan.parallel == "ddp",
                     plan.saves_own_models, share) for share in plan.shares]
    t0 = time.perf_counter()
    if plan.parallel == "workers":
        _train_in_workers(jobs, ctx.run_dir.log, (train, val))
    else:
        train_share(jobs[rank() if plan.parallel == "grid" else 0], (train, val))
    barrier()  # rank 0 records the stage only once every rank has saved its models
    if not is_main_process():
        return
    checkpoints = ctx.run_dir.train_checkpoints_dir
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()
    shares = [[paths[entry].stem for group in share for entry in group] for share in plan.shares]
    trained = [stem for share in shares for stem in share]
    main = paths[main_entry(cfg)].stem
    stats = _input_stats(ctx.run_dir, [main, *trained])
    ctx.record("train", {
        "main_model": main, "embeddings": embeddings, "models_trained": trained, "models_skipped": skipped,
        "models_set_aside": stale, "seconds": round(time.perf_counter() - t0, 1), "world_size": world,
        "parallel": plan.parallel, "shares": shares,
        "fused_groups": [len(group) for share in plan.shares for group in share],
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
