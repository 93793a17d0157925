"""Your own PPG as a table (data.source: table): CSV or Parquet, long form or one row per record.

Layouts (chosen from the file, never from its name):
- Long form, one row per sample: `patient_id`, optional `record_id` (default: the patient_id), `ppg`, and
  either a time column (`data.table_time_column`, unit `data.table_time_unit`: s | ms | datetime; ISO 8601
  date-times may mix precisions, e.g. some rows without fractional seconds) or a per-record `fs` column
  (Hz). Timestamps are split at steps > `data.max_gap_s` and put on a uniform grid at the measured rate
  (`stsae.data.resample.uniform_runs`), so jittered clocks and rates such as 117.03 Hz are fine.
- One row per record: `patient_id`, optional `record_id` (default `<patient_id>#<k>`), `fs`, and `ppg` as an
  array (a Parquet list column, or in a CSV a bracketed list "[0.1, 0.2, …]").

Streaming: the file is read `data.table_chunk_rows` rows at a time (a few rows at a time in the one-row-per-
record layout) and each record is yielded as soon as its last row has been read, so memory is one chunk
plus one record however many records the file holds. This needs the rows of a record to be contiguous
(sort by patient_id, record_id, time first); a record whose rows reappear later is an InputDataError
naming the file and the record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stsae.data.issues import DataIssues
from stsae.data.records import RawRecord, split_long
from stsae.data.resample import uniform_runs
from stsae.errors import InputDataError

log = logging.getLogger(__name__)

SOURCE = "table"
_ARRAY_ROWS = 32  # records per chunk in the one-row-per-record layout (each row may hold hours of signal)
_SECOND = pd.Timedelta(seconds=1)


@dataclass(frozen=True)
class TableOptions:
    """The data.table_* keys plus the timing limits every source shares."""

    time_column: str = "time"
    time_unit: str = "s"
    chunk_rows: int = 500_000
    max_gap_s: float = 1.0
    max_record_s: float = 3600.0


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _columns(path: Path) -> list[str]:
    try:
        if _is_parquet(path):
            return list(pq.ParquetFile(path).schema_arrow.names)
        return list(pd.read_csv(path, nrows=0).columns)
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputDataError(f"data.table_path: {path} is not a readable CSV/Parquet ({exc})") from None


def _is_array_layout(path: Path) -> bool:
    """True when `ppg` holds one array per row (Parquet list type, or a CSV cell starting with '[')."""
    if _is_parquet(path):
        kind = pq.ParquetFile(path).schema_arrow.field("ppg").type
        return pa.types.is_list(kind) or pa.types.is_large_list(kind)
    first = pd.read_csv(path, nrows=1, usecols=["ppg"], dtype={"ppg": str})["ppg"]
    return bool(len(first)) and str(first.iloc[0]).lstrip().startswith("[")


def _chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The file `rows` rows at a time, patient_id / record_id as strings."""
    ids = {"patient_id": str, "record_id": str}
    try:
        if _is_parquet(path):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
                frame = batch.to_pandas()
                yield frame.astype({k: str for k in ids if k in frame.columns})
        else:
            with pd.read_csv(path, chunksize=rows, dtype=ids) as reader:
                yield from reader
    except (OSError, ValueError, pa.ArrowException, UnicodeDecodeError) as exc:
        raise InputDataError(f"data.table_path: {path}: cannot parse ({str(exc).splitlines()[0]})") from None


def _seconds(values: pd.Series, unit: str, path: Path, column: str) -> np.ndarray:
    """Timestamps → float64 seconds from the first one (date-times: ISO 8601, precision may vary by row)."""
    try:
        if unit == "datetime":
            stamps = pd.to_datetime(values, format="ISO8601", utc=True)
            return ((stamps - stamps.iloc[0]) / _SECOND).to_numpy(dtype=np.float64)
        numbers = pd.to_numeric(values).to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        hint = "datetime" if unit != "datetime" else "s or ms"
        raise InputDataError(f"data.table_time_column: {path} column '{column}' is not in unit "
                             f"data.table_time_unit={unit} ({str(exc).splitlines()[0]}); try {hint}") from None
    return (numbers - numbers[0]) / (1000.0 if unit == "ms" else 1.0)


def _long_record(rows: pd.DataFrame, path: Path, options: TableOptions,
                 issues: DataIssues) -> Iterator[RawRecord]:
    """The RawRecord(s) of one record's rows (several when a time gap splits it)."""
    patient, record = str(rows["patient_id"].iloc[0]), _record_id(rows)
    where = f"{path} (record {record})"
    ppg = pd.to_numeric(rows["ppg"], errors="coerce").to_numpy(dtype=np.float64)
    if options.time_column in rows.columns:
        seconds = _seconds(rows[options.time_column], options.time_unit, path, options.time_column)
        try:
            runs = uniform_runs(seconds, ppg, options.max_gap_s)
        except ValueError as exc:
            issues.skip("bad_time_vector", path, f"{where}: {exc}; sort the rows by time")
            return
        pieces = [(run.t_start_s, run.fs, run.signal) for run in runs]
    else:
        fs = pd.to_numeric(rows["fs"], errors="coerce").to_numpy(dtype=np.float64)
        if not (np.isfinite(fs[0]) and fs[0] > 0 and np.all(fs == fs[0])):
            issues.skip("bad_sampling_rate", path, f"{where}: fs must be one positive number per record")
            return
        pieces = [(0.0, float(fs[0]), ppg)]
    for k, (t0, fs_run, signal) in enumerate(pieces):
        name = record if len(pieces) == 1 else f"{record}#run{k}"
        yield from split_long(RawRecord(patient, name, signal, fs_run, SOURCE, t0, origin=str(path)),
                              options.max_record_s)


def _record_id(rows: pd.DataFrame) -> str:
    return str(rows["record_id"].iloc[0] if "record_id" in rows.columns else rows["patient_id"].iloc[0])


def _keys(frame: pd.DataFrame) -> pd.Series:
    if "record_id" in frame.columns:
        return frame["patient_id"].astype(str) + "\x1f" + frame["record_id"].astype(str)
    return frame["patient_id"].astype(str)


def _long_groups(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """Rows of one record at a time, carrying a record that straddles a chunk boundary into the next."""
    done: set[str] = set()
    carry: list[pd.DataFrame] = []
    carry_key = ""
    for chunk in _chunks(path, rows):
        keys = _keys(chunk).to_numpy()
        starts = np.concatenate([[0], np.flatnonzero(keys[1:] != keys[:-1]) + 1])
        for start, stop in zip(starts, [*starts[1:], len(chunk)], strict=True):
            if carry and carry_key != keys[start]:
                yield _finish(carry, carry_key, done, path)
                carry = []
            carry_key = keys[start]
            carry.append(chunk.iloc[start:stop])
    if carry:
        yield _finish(carry, carry_key, done, path)


def _finish(parts: list[pd.DataFrame], key: str, done: set[str], path: Path) -> pd.DataFrame:
    rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    if key in done:
        raise InputDataError(f"data.table_path: {path}: rows of record {key.replace(chr(31), '/')} are not "
                             "contiguous; sort the file by patient_id, record_id and time first")
    done.add(key)
    return rows


def _array_records(path: Path, options: TableOptions, issues: DataIssues) -> Iterator[RawRecord]:
    seen: dict[str, int] = {}
    for chunk in _chunks(path, _ARRAY_ROWS):
        for row in chunk.itertuples(index=False):
            patient = str(row.patient_id)
            given = getattr(row, "record_id", None)
            record = f"{patient}#{seen.get(patient, 0)}" if given is None or pd.isna(given) else str(given)
            seen[patient] = seen.get(patient, 0) + 1
            fs = float(pd.to_numeric(row.fs, errors="coerce"))
            if not (np.isfinite(fs) and fs > 0):
                issues.skip("bad_sampling_rate", path, f"{path} (record {record}): fs {row.fs!r} is not positive")
                continue
            signal = _array(row.ppg)
            yield from split_long(RawRecord(patient, record, signal, fs, SOURCE, origin=str(path)),
                                  options.max_record_s)


def _array(cell: object) -> np.ndarray:
    """A Parquet list cell or a CSV "[a, b, …]" string as float64[n] (unparsable entries become NaN)."""
    if isinstance(cell, str):
        items = cell.strip().strip("[]").split(",")
        return pd.to_numeric(pd.Series(items), errors="coerce").to_numpy(dtype=np.float64)
    return np.asarray(cell, dtype=np.float64)


def iter_table_records(path: Path, options: TableOptions | None = None,
                       issues: DataIssues | None = None) -> Iterator[RawRecord]:
    """Stream the records of a PPG table (layouts in the module docstring), one record in memory at a time.

    Raises InputDataError naming the file and the config key when a required column is missing; a record
    with an unusable time vector or rate is skipped and recorded in `issues`.
    """
    options = options or TableOptions()
    issues = issues if issues is not None else DataIssues()
    columns = _columns(path)
    missing = [c for c in ("patient_id", "ppg") if c not in columns]
    if missing:
        raise InputDataError(f"data.table_path: {path} has no column(s) {', '.join(missing)} "
                             f"(columns: {', '.join(columns)})")
    if _is_array_layout(path):
        if "fs" not in columns:
            raise InputDataError(f"data.table_path: {path} holds one array per row but no 'fs' column")
        yield from _array_records(path, options, issues)
        return
    if options.time_column not in columns and "fs" not in columns:
        raise InputDataError(f"data.table_time_column: {path} has no column '{options.time_column}' (nor a "
                             f"per-record 'fs'); columns: {', '.join(columns)}")
    for rows in _long_groups(path, options.chunk_rows):
        yield from _long_record(rows, path, options, issues)
