"""prepare stage: raw PPG (built-in synthetic cohort or a real source) → windows/.

Writes windows.npy (float32[N, 1250], streamed to disk: N need not be known up front), meta.parquet,
qc.parquet and splits.parquet (docs/CONTRACTS.md). Every source goes through the same windowing,
band-pass, z-score and QC code. All four files are written under temporary names and renamed only
after everything succeeded, so a killed prepare never leaves files a later stage could trust.
Windows failing QC stay in windows.npy (marked in qc.parquet) so window_id always equals the row.

Shardable: under `torchrun --nproc-per-node N -m stsae prepare` rank r windows and QCs the work units
(synthetic chunks, or real records in stream order) u with u mod N = r into its own temporary shard;
rank 0 then copies the shards' rows into windows.npy in unit order and assembles the metadata, so
every output is byte-identical to a single process's. Real sources are still read by every rank (the
loaders stream files in one order); only windowing, band-pass and QC are split.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import torch.distributed as torch_dist

from stsae.config import Config, DataSection
from stsae.data.issues import DataIssues
from stsae.data.records import CLINICAL_FIELDS
from stsae.data.resample import resampling_summary
from stsae.data.synthetic import iter_cohort, window_factors, windows_per_record
from stsae.data.windowing import SamplingRateError, Windows, signal_quality_mask, window_record, window_signals
from stsae.errors import InputDataError
from stsae.pipeline.contract import StageContext, StageContract
from stsae.utils import io
from stsae.utils.dist import process_group, rank, world_size
from stsae.utils.progress import progress
from stsae.utils.splits import patient_split

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """Windows of one work unit (a synthetic chunk or a real record) plus their metadata rows (no
    window_id / split yet); `unit` is its position in the single-process order."""

    unit: int
    windows: Windows
    meta: pd.DataFrame
    fs_orig: float


@dataclass
class _Unit:
    """What one work unit left: its rows (written in unit order to the rank's file), metadata and QC."""

    unit: int
    n_rows: int
    meta: pd.DataFrame
    qc: pd.DataFrame


@dataclass
class _Skip:
    """A record windowing could not use, kept to be counted in unit order after every rank is done."""

    unit: int
    reason: str
    where: str
    detail: str


@dataclass
class _Shard:
    """One rank's work: its units in processing order, its skips, and the file holding its rows."""

    units: list[_Unit]
    skips: list[_Skip]
    rows_path: Path

    @property
    def n_rows(self) -> int:
        return sum(u.n_rows for u in self.units)


class NpyRowWriter:
    """Append float32 rows to a .npy file whose row count is unknown until close().

    numpy pads the header so the leading dimension can grow in place; close() rewrites it with the
    final shape. Memory stays at one batch however many rows are written.
    """

    def __init__(self, path: Path, width: int):
        self.width = width
        self.rows = 0
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        self._header_len = self._write_header()

    def _write_header(self) -> int:
        self._handle.seek(0)
        np.lib.format.write_array_header_1_0(
            self._handle, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.width)})
        return self._handle.tell()

    def append(self, rows: np.ndarray) -> None:
        """rows: float32[B, width]."""
        if rows.ndim != 2 or rows.shape[1] != self.width or rows.dtype != np.float32:
            raise ValueError(f"expected float32[B, {self.width}], got {rows.dtype}{list(rows.shape)}")
        self._handle.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.rows += rows.shape[0]

    def close(self) -> None:
        end = self._handle.tell()
        if self._write_header() != self._header_len:
            raise RuntimeError("npy header changed size while growing; cannot finalise in place")
        self._handle.seek(end)
        self._handle.close()


def _clinical_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """age (float, NaN unknown), sex ("M"/"F"/None), htn, t2d (float 0/1/NaN)."""
    return pd.DataFrame({
        "age": pd.to_numeric(frame["age"], errors="coerce").astype(float),
        "sex": frame["sex"].where(frame["sex"].isin(["M", "F"]), None).astype(object),
        "htn": pd.to_numeric(frame["htn"], errors="coerce").astype(float),
        "t2d": pd.to_numeric(frame["t2d"], errors="coerce").astype(float),
    })


def _window_meta(windows: Windows, patient_id: np.ndarray, record_id: np.ndarray, t0: np.ndarray,
                 fs_orig: float, source: np.ndarray, clinical: pd.DataFrame) -> pd.DataFrame:
    """Per-window rows; the per-record arrays (length R) are indexed by windows.row."""
    row = windows.row
    return pd.concat([pd.DataFrame({
        "patient_id": patient_id[row].astype(str),
        "record_id": record_id[row].astype(str),
        "segment_idx": windows.segment_idx,
        "t_start_s": t0[row] + windows.t_start_s,
        "fs_orig": np.full(row.size, float(fs_orig)),
        "source": source[row].astype(str),
    }), clinical.iloc[row].reset_index(drop=True)], axis=1)


def _synthetic_batches(config: Config, this_rank: int, world: int) -> Iterator[_Batch]:
    """This rank's chunks: chunk `this_rank + k·world` is the k-th one iter_cohort renders for it."""
    syn, wcfg = config.data.synthetic, config.data.windowing
    for k, chunk in enumerate(iter_cohort(syn, config.run.seed, wcfg.window_s, shard=(this_rank, world))):
        windows = window_signals(chunk.signals, chunk.fs, wcfg)
        rec = chunk.records
        meta = _window_meta(windows, rec["patient_id"].to_numpy(), rec["record_id"].to_numpy(),
                            np.zeros(len(rec)), chunk.fs, np.full(len(rec), "synthetic"),
                            _clinical_columns(rec))
        planted = window_factors(chunk, windows.row, windows.t_start_s, wcfg.window_s)
        yield _Batch(this_rank + k * world, windows, pd.concat([meta, planted], axis=1), chunk.fs)


def _source_batches(config: Config, issues: DataIssues, skips: list[_Skip], this_rank: int,
                    world: int) -> Iterator[_Batch]:
    """This rank's records (stream position mod world); the loader's own issues go to `issues` on every
    rank, windowing's skips to `skips`."""
    from stsae.data.sources import iter_source_records  # real loaders are optional for the demo

    for unit, record in enumerate(iter_source_records(config.data, issues)):
        if unit % world != this_rank:
            continue
        try:
            windows = window_record(record, config.data.windowing)
        except SamplingRateError as exc:
            where = record.origin or record.record_id
            skips.append(_Skip(unit, "sampling_rate_too_low", where, f"{where}: {exc}"))
            continue
        clinical = _clinical_columns(pd.DataFrame([{k: record.clinical.get(k) for k in CLINICAL_FIELDS}]))
        meta = _window_meta(windows, np.array([record.patient_id]), np.array([record.record_id]),
                            np.array([record.t_start_s]), record.fs, np.array([record.source]), clinical)
        for key, value in record.extra.items():
            meta[key] = value
        yield _Batch(unit, windows, meta, record.fs)


def _expected_windows(config: Config) -> int | None:
    if config.data.source != "synthetic":
        return None
    syn = config.data.synthetic
    return syn.n_patients * syn.records_per_patient * windows_per_record(syn, config.data.windowing.window_s)


def _window_units(config: Config, issues: DataIssues, writer: NpyRowWriter, this_rank: int,
                  world: int) -> tuple[list[_Unit], list[_Skip]]:
    """Window, QC and write this rank's units in order; returns their metadata and windowing skips."""
    data = config.data
    skips: list[_Skip] = []
    batches = (_synthetic_batches(config, this_rank, world) if data.source == "synthetic"
               else _source_batches(config, issues, skips, this_rank, world))
    units: list[_Unit] = []
    expected = _expected_windows(config) if world == 1 else None
    with progress(expected, "prepare" if world == 1 else f"prepare r{this_rank}", "win") as bar:
        for batch in batches:
            qc_pass, reason = signal_quality_mask(batch.windows.raw, batch.fs_orig, **data.qc.model_dump())
            writer.append(batch.windows.windows)
            units.append(_Unit(batch.unit, len(batch.meta), batch.meta,
                               pd.DataFrame({"qc_pass": qc_pass, "qc_reason": reason.astype(object)})))
            bar.update(len(batch.meta))
    return units, skips


def _width(config: Config) -> int:
    """Samples per window (1250 at 10 s and 125 Hz)."""
    return round(config.data.windowing.window_s * config.data.windowing.fs_target)


def _rank_shard(config: Config, issues: DataIssues, rows_path: Path, this_rank: int, world: int) -> _Shard:
    """Window this rank's units into `rows_path` (a complete .npy once this returns)."""
    writer = NpyRowWriter(rows_path, _width(config))
    try:
        units, skips = _window_units(config, issues, writer, this_rank, world)
    finally:
        writer.close()
    return _Shard(units, skips, rows_path)


def _require_windows(n_rows: int, data: DataSection) -> None:
    if n_rows == 0:
        raise InputDataError(f"data.source={data.source}: no record was long enough for one "
                             f"{data.windowing.window_s} s window")


def _copy_rows_in_unit_order(shards: list[_Shard], tmp_windows: Path, width: int) -> None:
    """Rank 0: windows.npy = every shard's rows, unit by unit in single-process order."""
    located = []
    for shard in shards:
        if shard.units:
            rows = io.open_memmap_rows(shard.rows_path, width)
            starts = np.cumsum([0] + [u.n_rows for u in shard.units])[:-1]
            located += [(unit.unit, rows, int(start), unit.n_rows)
                        for unit, start in zip(shard.units, starts, strict=True)]
    writer = NpyRowWriter(tmp_windows, width)
    try:
        for _, rows, start, n_rows in sorted(located, key=lambda item: item[0]):
            writer.append(np.asarray(rows[start:start + n_rows]))
            io.release_mapped_pages(rows)
    finally:
        writer.close()


def _count_skips(shards: list[_Shard], issues: DataIssues) -> None:
    """Count (and log) windowing's skips in the order a single process meets them, then the summary."""
    for skip in sorted((s for shard in shards for s in shard.skips), key=lambda s: s.unit):
        issues.skip(skip.reason, skip.where, skip.detail)
    issues.log_summary()


def _metadata(config: Config, shards: list[_Shard]) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """meta, qc (window_id = row) and the patient split from every shard's units in unit order."""
    units = sorted((u for shard in shards for u in shard.units), key=lambda u: u.unit)
    meta = pd.concat([u.meta for u in units], ignore_index=True)
    meta.insert(0, "window_id", np.arange(len(meta), dtype=np.int64))
    split_cfg = config.data.split
    patients = meta.groupby("patient_id", sort=False)["age"].first().reset_index()
    split = patient_split(patients, split_cfg.val_fraction, split_cfg.test_fraction, split_cfg.age_bin_edges,
                          config.run.seed)
    meta.insert(7, "split", meta["patient_id"].map(split).to_numpy())
    qc = pd.concat([u.qc for u in units], ignore_index=True)
    qc.insert(0, "window_id", meta["window_id"].to_numpy())
    return meta, qc, split


def _write_metadata(ctx: StageContext, stack: contextlib.ExitStack,
                    shards: list[_Shard]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write meta, qc and splits under temporary names held by `stack` (renamed with windows.npy)."""
    run_dir = ctx.run_dir
    tmp_meta, tmp_qc, tmp_splits = (stack.enter_context(io.atomic_path(path))
                                    for path in (run_dir.meta, run_dir.qc, run_dir.splits))
    meta, qc, split = _metadata(ctx.config, shards)
    meta.to_parquet(tmp_meta, index=False)
    qc.to_parquet(tmp_qc, index=False)
    pd.DataFrame({"patient_id": split.index.to_numpy(), "split": split.to_numpy()}).to_parquet(
        tmp_splits, index=False)
    return meta, qc


def _run_single(ctx: StageContext) -> None:
    """One process: rows go straight into windows.npy's temporary file."""
    issues = DataIssues()
    with contextlib.ExitStack() as stack:
        tmp_windows = stack.enter_context(io.atomic_path(ctx.run_dir.windows))
        shard = _rank_shard(ctx.config, issues, tmp_windows, 0, 1)
        _count_skips([shard], issues)
        _require_windows(shard.n_rows, ctx.config.data)
        meta, qc = _write_metadata(ctx, stack, [shard])
    _log_qc(ctx, meta, qc, issues)


def _run_sharded(ctx: StageContext, this_rank: int, world: int) -> None:
    """torchrun: each rank windows its units into its own temporary file; rank 0 assembles the outputs,
    and every rank waits for it before removing its file (and before a next stage reads windows/)."""
    issues = DataIssues()
    rows_path = io.temp_path(ctx.run_dir.windows_dir / f"windows-rank{this_rank}.npy")
    try:
        shard = _rank_shard(ctx.config, issues, rows_path, this_rank, world)
        counts: list[int] = [0] * world
        torch_dist.all_gather_object(counts, shard.n_rows)
        gathered: list[_Shard] | None = [shard] * world if this_rank == 0 else None  # filled by the gather
        torch_dist.gather_object(shard, gathered, dst=0)
        if gathered is not None:
            _count_skips(gathered, issues)
        _require_windows(sum(counts), ctx.config.data)
        if gathered is not None:
            started = time.perf_counter()
            with contextlib.ExitStack() as stack:
                tmp_windows = stack.enter_context(io.atomic_path(ctx.run_dir.windows))
                _copy_rows_in_unit_order(gathered, tmp_windows, _width(ctx.config))
                meta, qc = _write_metadata(ctx, stack, gathered)
            log.info("prepare: rank 0 assembled %d windows from %d ranks in %.1f s", len(meta), world,
                     time.perf_counter() - started)
            _log_qc(ctx, meta, qc, issues)
        torch_dist.barrier()
    finally:
        rows_path.unlink(missing_ok=True)


# prepare reads every data key but the augmentation (extract's), so new source options are covered as
# they are added to DataSection
CONTRACT = StageContract(
    name="prepare", help="Simulate or load raw PPG, window it, QC it, split patients.",
    reads=("run.seed", *(f"data.{name}" for name in DataSection.model_fields if name != "augment")),
    inputs=("data.pulsedb_root", "data.pulsedb_subset_info", "data.mimic_iii_root", "data.mimic_iii_clinical",
            "data.mimic_iv_root", "data.mimic_iv_clinical", "data.table_path", "data.wfdb_root", "data.npz_path",
            "data.clinical_path"),
    upstream=(), out_dir="windows", multi_rank=True)


def run(ctx: StageContext) -> None:
    """Simulate or load raw PPG, window it, QC it, split patients; write windows/ atomically (sharded
    over torchrun ranks when launched with several)."""
    this_rank, world = rank(), world_size()
    if world == 1:
        _run_single(ctx)
        return
    with process_group():
        _run_sharded(ctx, this_rank, world)


def _log_qc(ctx: StageContext, meta: pd.DataFrame, qc: pd.DataFrame, issues: DataIssues) -> None:
    rejected = qc.loc[~qc["qc_pass"], "qc_reason"].value_counts().to_dict()
    rate = float(qc["qc_pass"].mean())
    log.info("prepare: %d windows from %d patients, QC pass rate %.1f%%; rejected by reason: %s",
             len(qc), meta["patient_id"].nunique(), 100 * rate, rejected or "none")
    ctx.record("prepare", {"n_windows": len(qc), "n_patients": int(meta["patient_id"].nunique()),
                           "qc_pass_rate": rate, "qc_rejections": {k: int(v) for k, v in rejected.items()},
                           "data_issues": issues.summary(),
                           "resampling": resampling_summary(meta["fs_orig"].to_numpy(),
                                                            ctx.config.data.windowing.fs_target)})
