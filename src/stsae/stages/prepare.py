"""prepare stage: raw PPG (built-in synthetic cohort or a real source) → windows/.

Writes windows.npy (float32[N, 1250], streamed to disk: N need not be known up front), meta.parquet,
qc.parquet and splits.parquet (docs/CONTRACTS.md). Every source goes through the same windowing,
band-pass, z-score and QC code. All four files are written under temporary names and renamed only
after everything succeeded, so a killed prepare never leaves files a later stage could trust.
Windows failing QC stay in windows.npy (marked in qc.parquet) so window_id always equals the row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from stsae.config import Config, DataSection
from stsae.data.issues import DataIssues
from stsae.data.records import CLINICAL_FIELDS
from stsae.data.resample import resampling_summary
from stsae.data.synthetic import iter_cohort, window_factors, windows_per_record
from stsae.data.windowing import SamplingRateError, Windows, signal_quality_mask, window_record, window_signals
from stsae.errors import InputDataError
from stsae.pipeline.contract import StageContext, StageContract
from stsae.utils import io
from stsae.utils.progress import progress
from stsae.utils.splits import patient_split

log = logging.getLogger(__name__)



@dataclass
class _Batch:
    """Windows of one or more records plus their metadata rows (no window_id / split yet)."""

    windows: Windows
    meta: pd.DataFrame
    fs_orig: float


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


def _synthetic_batches(config: Config) -> Iterator[_Batch]:
    syn, wcfg = config.data.synthetic, config.data.windowing
    for chunk in iter_cohort(syn, config.run.seed, wcfg.window_s):
        windows = window_signals(chunk.signals, chunk.fs, wcfg)
        rec = chunk.records
        meta = _window_meta(windows, rec["patient_id"].to_numpy(), rec["record_id"].to_numpy(),
                            np.zeros(len(rec)), chunk.fs, np.full(len(rec), "synthetic"),
                            _clinical_columns(rec))
        planted = window_factors(chunk, windows.row, windows.t_start_s, wcfg.window_s)
        yield _Batch(windows, pd.concat([meta, planted], axis=1), chunk.fs)


def _source_batches(config: Config, issues: DataIssues) -> Iterator[_Batch]:
    from stsae.data.sources import iter_source_records  # real loaders are optional for the demo

    for record in iter_source_records(config.data, issues):
        try:
            windows = window_record(record, config.data.windowing)
        except SamplingRateError as exc:
            issues.skip("sampling_rate_too_low", record.origin or record.record_id,
                        f"{record.origin or record.record_id}: {exc}")
            continue
        clinical = _clinical_columns(pd.DataFrame([{k: record.clinical.get(k) for k in CLINICAL_FIELDS}]))
        meta = _window_meta(windows, np.array([record.patient_id]), np.array([record.record_id]),
                            np.array([record.t_start_s]), record.fs, np.array([record.source]), clinical)
        for key, value in record.extra.items():
            meta[key] = value
        yield _Batch(windows, meta, record.fs)


def _expected_windows(config: Config) -> int | None:
    if config.data.source != "synthetic":
        return None
    syn = config.data.synthetic
    return syn.n_patients * syn.records_per_patient * windows_per_record(syn, config.data.windowing.window_s)


# prepare reads every data key but the augmentation (extract's), so new source options are covered as
# they are added to DataSection
CONTRACT = StageContract(
    name="prepare", help="Simulate or load raw PPG, window it, QC it, split patients.",
    reads=("run.seed", *(f"data.{name}" for name in DataSection.model_fields if name != "augment")),
    inputs=("data.pulsedb_root", "data.pulsedb_subset_info", "data.mimic_iii_root", "data.mimic_iii_clinical",
            "data.mimic_iv_root", "data.mimic_iv_clinical", "data.table_path", "data.wfdb_root", "data.npz_path",
            "data.clinical_path"),
    upstream=(), out_dir="windows")


def run(ctx: StageContext) -> None:
    """Simulate or load raw PPG, window it, QC it, split patients; write windows/ atomically."""
    config, run_dir = ctx.config, ctx.run_dir
    data = config.data
    issues = DataIssues()
    batches = _synthetic_batches(config) if data.source == "synthetic" else _source_batches(config, issues)
    width = round(data.windowing.window_s * data.windowing.fs_target)
    metas: list[pd.DataFrame] = []
    qcs: list[pd.DataFrame] = []
    with contextlib.ExitStack() as stack:
        tmp_windows = stack.enter_context(io.atomic_path(run_dir.windows))
        tmp_meta = stack.enter_context(io.atomic_path(run_dir.meta))
        tmp_qc = stack.enter_context(io.atomic_path(run_dir.qc))
        tmp_splits = stack.enter_context(io.atomic_path(run_dir.splits))
        writer = NpyRowWriter(tmp_windows, width)
        stack.callback(writer.close)
        bar = stack.enter_context(progress(_expected_windows(config), "prepare", "win"))
        for batch in batches:
            qc_pass, reason = signal_quality_mask(batch.windows.raw, batch.fs_orig, **data.qc.model_dump())
            writer.append(batch.windows.windows)
            metas.append(batch.meta)
            qcs.append(pd.DataFrame({"qc_pass": qc_pass, "qc_reason": reason.astype(object)}))
            bar.update(len(batch.meta))
        issues.log_summary()
        if writer.rows == 0:
            raise InputDataError(f"data.source={data.source}: no record was long enough for one "
                                 f"{data.windowing.window_s} s window")
        meta = pd.concat(metas, ignore_index=True)
        meta.insert(0, "window_id", np.arange(len(meta), dtype=np.int64))
        patients = meta.groupby("patient_id", sort=False)["age"].first().reset_index()
        split = patient_split(patients, data.split.val_fraction, data.split.test_fraction,
                              data.split.age_bin_edges, config.run.seed)
        meta.insert(7, "split", meta["patient_id"].map(split).to_numpy())
        qc = pd.concat(qcs, ignore_index=True)
        qc.insert(0, "window_id", meta["window_id"].to_numpy())
        meta.to_parquet(tmp_meta, index=False)
        qc.to_parquet(tmp_qc, index=False)
        pd.DataFrame({"patient_id": split.index.to_numpy(), "split": split.to_numpy()}).to_parquet(
            tmp_splits, index=False)
    _log_qc(ctx, meta, qc, issues)


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
