"""extract stage: PaPaGei-S embeddings z (clean windows), z_aug (windows under the stability augmentation
families, L_stab's view) and, when data.augment.heldout_families is set, z_aug_heldout (windows under the
held-out families, the evaluation's view; test windows only, NaN elsewhere: data/augment_views.py) of
QC-passed windows.

Resumable and shardable. Rows are cut into global chunks of `extract.chunk_rows`; each chunk is encoded,
written into preallocated float32 memmaps (`z.npy.partial`, `z_aug.npy.partial`), flushed, and only
then counted in a per-rank progress file (atomic JSON carrying a resume key built from the stage
fingerprint, weights identity and precision). A killed run continues from its last committed chunk and,
because chunk and batch boundaries never move, writes the same bytes as an uninterrupted run. Under
`torchrun` each rank takes a contiguous range of chunks; rank 0 preallocates, publishes the files under
their real names once every rank is done, and writes index.parquet and the manifest fact.

Device-agnostic: `extract.device` picks the CPU or a GPU (cuda:LOCAL_RANK per torchrun rank). A loader
thread reads the next chunk and makes its augmentations' per-window draws (seeded numpy per window, see
data/augment.py) into reusable (pinned, on CUDA) buffers while the device encodes the current one. The
draws become augmented windows either on the host, in the same thread or `augment_workers` processes
(`extract.augment_on: cpu`, the reference bytes), or on the device (`device`, auto on CUDA:
data/augment_torch.py, float64, within 1 float32 ulp per sample of the host's windows), where the
arithmetic is free and the loader is left only the draws; `extract.augment_draws: philox` (opt-in, another
random stream) makes the draws on the device too. `data/augment_views.ViewPlan` holds that choice. On the
CPU the bytes equal the plain sequential loop's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as torch_dist

from stsae.config import Config
from stsae.data.augment_views import HELDOUT_SPLITS, AugmentDraws, AugmentOn, ViewPlan, resolve_augment_on
from stsae.data.store import EMBEDDING_DIM, INDEX_COLUMNS
from stsae.errors import InputDataError
from stsae.models.encoder_runtime import (
    CALIBRATION_WINDOWS,
    CPU_BATCH_SIZE,
    ChunkPrefetcher,
    CompiledEmbedder,
    FastEmbedder,
    choose_precision,
    configure_threads,
    resolve_augment_workers,
    resolve_batch_size,
    should_compile,
)
from stsae.models.papagei import WINDOW_SAMPLES, Precision, embed_batches, load_encoder
from stsae.pipeline.contract import StageContext, StageContract
from stsae.rundir import RunDir
from stsae.utils import io
from stsae.utils.device import device_facts, resolve_device
from stsae.utils.dist import barrier, process_group, rank, world_size
from stsae.utils.progress import progress

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTIAL_SUFFIX = ".partial"
_LIBRARY = {"cpu": "oneDNN", "cuda": "cuDNN"}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _state_path(paths: RunDir) -> Path:
    return paths.embeddings_dir / ".extract-state.json"


def _progress_path(paths: RunDir, this_rank: int, world: int) -> Path:
    return paths.embeddings_dir / f".extract-progress-r{this_rank}of{world}.json"


def read_passed_windows(paths: RunDir) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Open windows.npy (memmap) and select QC-passed windows in window_id order.

    Returns (windows float32[N, 1250] memmap, window_ids int64[M] sorted, index DataFrame of M rows with
    INDEX_COLUMNS). Inconsistent inputs raise InputDataError naming the file and field.
    """
    try:
        windows = io.open_memmap_rows(paths.windows, WINDOW_SAMPLES)
    except ValueError as exc:
        raise InputDataError(str(exc)) from None
    meta = io.read_parquet(paths.meta)
    qc = io.read_parquet(paths.qc)
    for path, frame, columns in ((paths.meta, meta, INDEX_COLUMNS), (paths.qc, qc, ("window_id", "qc_pass"))):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputDataError(f"{path}: missing column(s) {missing}")
    n = windows.shape[0]
    if len(meta) != n or not np.array_equal(meta["window_id"].to_numpy(), np.arange(n)):
        raise InputDataError(f"{paths.meta}: window_id must be 0..{n - 1} in order, one row per row of "
                             f"{paths.windows.name} ({n} rows), got {len(meta)} rows")
    qc_ids = qc["window_id"].to_numpy()
    if len(qc) != n or not np.array_equal(np.sort(qc_ids), np.arange(n)):
        raise InputDataError(f"{paths.qc}: window_id must list each of the {n} windows exactly once")
    window_ids = np.sort(qc_ids[qc["qc_pass"].to_numpy(dtype=bool)]).astype(np.int64)
    if window_ids.size == 0:
        raise InputDataError(f"{paths.qc}: no window has qc_pass=True; nothing to encode")
    index = meta.iloc[window_ids][list(INDEX_COLUMNS)].reset_index(drop=True)
    return windows, window_ids, index


def _agree(world: int, value: T) -> T:
    """Rank 0's value on every rank, so all ranks encode with the same settings."""
    if world == 1:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class ChunkPlan:
    """Global chunks of rows and the contiguous chunk range [first, stop) owned by one rank."""

    n_rows: int
    chunk_rows: int
    first: int
    stop: int

    @classmethod
    def for_rank(cls, n_rows: int, chunk_rows: int, this_rank: int, world: int) -> ChunkPlan:
        n_chunks = -(-n_rows // chunk_rows)
        bounds = np.linspace(0, n_chunks, world + 1).round().astype(int)
        return cls(n_rows, chunk_rows, int(bounds[this_rank]), int(bounds[this_rank + 1]))

    def start_row(self, chunk: int) -> int:
        return min(chunk * self.chunk_rows, self.n_rows)

    def rows(self, chunk: int) -> tuple[int, int]:
        return self.start_row(chunk), self.start_row(chunk + 1)

    @property
    def n_rank_rows(self) -> int:
        return self.start_row(self.stop) - self.start_row(self.first)


def embedding_outputs(config: Config, paths: RunDir) -> list[Path]:
    """The memmaps extract writes: z, z_aug, and z_aug_heldout when held-out families are configured."""
    return [paths.z, paths.z_aug] + ([paths.z_aug_heldout] if config.data.augment.heldout_families else [])


def _prepare_outputs(paths: RunDir, outputs: list[Path], n_rows: int, key: str) -> None:
    """Rank 0: remove stale outputs; reuse matching partial memmaps, else preallocate fresh ones."""
    for final in (paths.z, paths.z_aug, paths.z_aug_heldout, paths.index):
        final.unlink(missing_ok=True)
    state = _state_path(paths)
    expected = {"key": key, "n_rows": n_rows}
    if state.is_file() and io.read_json(state) == expected and all(_partial(p).is_file() for p in outputs):
        log.info("resuming extraction (%d rows, key %s)", n_rows, key)
        return
    for old in paths.embeddings_dir.glob(".extract-progress-*.json"):
        old.unlink()
    for path in outputs:
        io.preallocate_npy(_partial(path), (n_rows, EMBEDDING_DIM))
    io.write_json(state, expected)


def _committed_chunks(path: Path, key: str, plan: ChunkPlan) -> int:
    if not path.is_file():
        return plan.first
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return plan.first
    if saved.get("key") != key or saved.get("first") != plan.first:
        return plan.first
    return min(int(saved["next_chunk"]), plan.stop)


def _publish(paths: RunDir, outputs: list[Path], index: pd.DataFrame) -> None:
    """Rank 0, after every rank finished: index.parquet, then the memmaps under their real names."""
    io.write_parquet(paths.index, index)
    for path in outputs:
        with io.atomic_path(path) as tmp:
            os.replace(_partial(path), tmp)
    for leftover in paths.embeddings_dir.glob(".extract-progress-*.json"):
        leftover.unlink()
    _state_path(paths).unlink(missing_ok=True)


def _resume_key(fingerprint: str, weights_sha256: str | None, runtime: Runtime, n_rows: int) -> str:
    """Rows committed under another key were encoded differently (compiled output, another device or
    batch size differ at float rounding level), so a resume must not mix them."""
    text = json.dumps([fingerprint, weights_sha256, runtime.precision, runtime.compiled, n_rows,
                       runtime.device.type, runtime.batch_size, runtime.augment_on, runtime.augment_draws])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Runtime:
    """How this process encodes: the resolved `extract.device`, `batch_size`, `precision`, `compile`,
    `augment_workers` (never changes the bytes), `augment_on` and `augment_draws`."""

    device: torch.device
    batch_size: int
    precision: Precision
    compiled: bool
    augment_workers: int = 0
    augment_on: AugmentOn = "cpu"
    augment_draws: AugmentDraws = "host"


@contextlib.contextmanager
def _augment_pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    """`workers` spawned processes (no fork of a threaded process), or None to augment in the loader thread."""
    if workers == 0:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _split_rows(pool: ProcessPoolExecutor, workers: int, ids: np.ndarray, heldout: np.ndarray,
                job: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]) -> list[np.ndarray]:
    """`job(ids, heldout)` computed as `job` of contiguous parts of (`ids`, `heldout`) on the pool's
    workers, concatenated: the same arrays, since every job's row i depends on its row i alone."""
    parts = [part for part in np.array_split(np.arange(len(ids)), workers) if len(part)]
    pieces = [future.result() for future in [pool.submit(job, ids[part], heldout[part]) for part in parts]]
    return [np.concatenate(view) for view in zip(*pieces, strict=True)]


def _chunk_loader(paths: RunDir, windows: np.ndarray, window_ids: np.ndarray, heldout: np.ndarray, plan: ChunkPlan,
                  views: ViewPlan, pool: ProcessPoolExecutor | None, workers: int) -> Callable[[int], list[np.ndarray]]:
    """The loader thread's job for one chunk: its clean windows from the memmap, then the host's share of
    the augmented views (`ViewPlan.on_host`), made in the thread or split across the pool's workers."""
    def produce(chunk: int) -> list[np.ndarray]:
        lo, hi = plan.rows(chunk)
        ids = window_ids[lo:hi]
        clean = np.ascontiguousarray(windows[ids], dtype=np.float32)
        io.release_mapped_pages(windows)
        if pool is None:
            return [clean, *views.on_host(clean, ids, heldout[lo:hi])]
        return [clean, *_split_rows(pool, workers, ids, heldout[lo:hi], views.worker_job(paths.windows))]
    return produce


def heldout_rows(index: pd.DataFrame) -> np.ndarray:
    """bool[M]: the rows z_aug_heldout encodes, those of `HELDOUT_SPLITS` (data/augment_views.py)."""
    return index["split"].isin(HELDOUT_SPLITS).to_numpy()


def _write_view(array: np.ndarray, lo: int, hi: int, rows: np.ndarray, embedded: np.ndarray) -> None:
    """Rows lo + `rows` of a memmap get `embedded`; the chunk's other rows, which this view does not
    cover, NaN (so no reader can take them for embeddings)."""
    if len(rows) == hi - lo:
        array[lo:hi] = embedded
        return
    block = np.full((hi - lo, EMBEDDING_DIM), np.nan, dtype=np.float32)
    block[rows] = embedded
    array[lo:hi] = block


def _encode_chunks(config: Config, paths: RunDir, outputs: list[Path], embedder: torch.nn.Module,
                   windows: np.ndarray, window_ids: np.ndarray, heldout: np.ndarray, plan: ChunkPlan, key: str,
                   runtime: Runtime) -> None:
    """Encode this rank's chunks from its last commit on; write every output's rows; commit each chunk.

    A `ChunkPrefetcher` thread reads chunk k+1 and does the host's share of its augmentation (`ViewPlan`)
    while chunk k is encoded."""
    this_rank, world = rank(), world_size()
    progress_file = _progress_path(paths, this_rank, world)
    start = _committed_chunks(progress_file, key, plan)
    arrays = [np.load(_partial(path), mmap_mode="r+") for path in outputs]
    done_rows = plan.start_row(start) - plan.start_row(plan.first)
    encoded, t0 = 0, time.perf_counter()
    views = ViewPlan(config.data.augment, config.data.windowing.fs_target, config.run.seed, WINDOW_SAMPLES,
                     runtime.augment_on, runtime.augment_draws)
    layout = views.layout()
    with _augment_pool(runtime.augment_workers) as pool, \
            progress(plan.n_rank_rows, f"extract r{this_rank}", unit="win") as bar, \
            ChunkPrefetcher(_chunk_loader(paths, windows, window_ids, heldout, plan, views, pool,
                                          runtime.augment_workers),
                            range(start, plan.stop), len(layout), plan.chunk_rows, WINDOW_SAMPLES,
                            pin=runtime.device.type == "cuda", layout=layout) as loader:
        bar.update(done_rows)
        for chunk, loaded in loader:
            lo, hi = plan.rows(chunk)
            windows_in = views.encoder_inputs(loaded, window_ids[lo:hi], heldout[lo:hi], runtime.device)
            rows_in = [np.arange(hi - lo), *views.view_rows(heldout[lo:hi])]
            for array, view, rows in zip(arrays, windows_in, rows_in, strict=True):
                embedded = (embed_batches(embedder, view, runtime.batch_size, runtime.precision, runtime.device)
                            if len(rows) else np.empty((0, EMBEDDING_DIM), dtype=np.float32))
                _write_view(array, lo, hi, rows, embedded)
                array.flush()
                io.release_mapped_pages(array)
                encoded += len(rows)
            io.write_json(progress_file, {"key": key, "first": plan.first, "next_chunk": chunk + 1})
            bar.update(hi - lo)
    seconds = time.perf_counter() - t0
    if encoded:
        log.info("rank %d encoded %d windows (clean + augmented views) in %.1f s: %.1f windows/s on %s",
                 this_rank, encoded, seconds, encoded / seconds, runtime.device)


CONTRACT = StageContract(
    name="extract", help="Encode windows and augmented windows with PaPaGei-S into z.npy / z_aug.npy.",
    reads=("run.seed", "encoder", "extract", "data.augment", "data.windowing.fs_target"),
    inputs=("encoder.weights",), upstream=("prepare",), out_dir="embeddings", multi_rank=True)


def _choose_runtime(config: Config, embedder: FastEmbedder, windows: np.ndarray, window_ids: np.ndarray,
                    device: torch.device, augment_on: AugmentOn, n_encodes: int) -> tuple[Runtime, float | None]:
    """Resolve precision (on a calibration batch), batch size and compile; every rank takes rank 0's."""
    world = world_size()
    requested = config.extract.batch_size
    calibration = np.ascontiguousarray(windows[window_ids[:CALIBRATION_WINDOWS]])
    precision, cosine = _agree(world, choose_precision(
        config.extract.precision, embedder, calibration, CPU_BATCH_SIZE if requested == "auto" else requested,
        device))
    batch_size = _agree(world, resolve_batch_size(requested, embedder, precision, device))
    if requested == "auto":  # a batch never spans chunks; a compiled one would be zero-padded up to its size
        batch_size = min(batch_size, config.extract.chunk_rows)
    compiled = _agree(world, should_compile(config.extract.compile, n_encodes, device))
    draws = config.extract.augment_draws
    workers = resolve_augment_workers(config.extract.augment_workers, device, world) if draws == "host" else 0
    return Runtime(device, batch_size, precision, compiled, workers, augment_on, draws), cosine


def run(ctx: StageContext) -> None:
    """Write embeddings/z.npy, z_aug.npy (float32[M, 512]) and index.parquet for the M QC-passed windows."""
    config, paths = ctx.config, ctx.run_dir
    this_rank, world = rank(), world_size()
    paths.embeddings_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.extract.device, "extract.device")
    augment_on = resolve_augment_on(config.extract.augment_on, device, config.extract.augment_draws)
    # gloo even on CUDA: extraction's only collectives are two barriers and one broadcast of settings
    # (each rank writes its own rows), which gain nothing from NCCL and would meet its 10-minute timeout.
    with process_group():
        threads = configure_threads(config.extract.num_threads, world)
        windows, window_ids, index = read_passed_windows(paths)
        model, identity = load_encoder(config.encoder, config.run.seed)
        embedder = FastEmbedder(model).to(device)
        n_rows = len(window_ids)
        plan = ChunkPlan.for_rank(n_rows, config.extract.chunk_rows, this_rank, world)
        heldout = heldout_rows(index)
        rank_heldout = heldout[plan.start_row(plan.first):plan.start_row(plan.stop)]
        n_encodes = 2 * plan.n_rank_rows + (int(rank_heldout.sum()) if config.data.augment.heldout_families else 0)
        runtime, cosine = _choose_runtime(config, embedder, windows, window_ids, device, augment_on, n_encodes)
        key = _resume_key(ctx.fingerprint, identity["sha256"], runtime, n_rows)
        outputs = embedding_outputs(config, paths)
        if this_rank == 0:
            _prepare_outputs(paths, outputs, n_rows, key)
        barrier()
        encoder = CompiledEmbedder(embedder, runtime.batch_size) if runtime.compiled else embedder
        _encode_chunks(config, paths, outputs, encoder, windows, window_ids, heldout, plan, key, runtime)
        barrier()
        if this_rank == 0:
            _publish(paths, outputs, index)
            ctx.record("devices", {"extract": device_facts(device)})
            ctx.record("encoder", {**identity, "precision": runtime.precision, "bf16_min_cosine": cosine,
                                   "runtime": f"FastEmbedder (channels-last {_LIBRARY[device.type]}, BN folded)"
                                   + (", torch.compile (Inductor, frozen)" if runtime.compiled else ""),
                                   "batch_size": runtime.batch_size, "augment_workers": runtime.augment_workers,
                                   "augment_on": runtime.augment_on, "augment_draws": runtime.augment_draws,
                                   "num_threads": threads, "world_size": world,
                                   "torch": torch.__version__})
            log.info("extract: %d of %d windows passed QC and were encoded (%s%s on %s, batch %d, %d thread(s) "
                     "x %d rank(s))", n_rows, windows.shape[0], runtime.precision,
                     ", compiled" if runtime.compiled else "", device, runtime.batch_size, threads, world)
