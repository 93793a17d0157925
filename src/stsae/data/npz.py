"""Your own PPG as one NumPy .npz file (data.source: npz).

Arrays (R records):
- `ppg`: float[R, n] (equal lengths; trailing NaN padding is trimmed per row), or float[total] holding all
  records one after another with `offsets`: int[R + 1] (record r is ppg[offsets[r]:offsets[r + 1]]), or an
  object array of R 1-D arrays (needs pickle, so only with data.npz_allow_pickle: true for files you trust);
- `fs`: a scalar or float[R] (Hz, any positive rate);
- `patient_id`: str/int[R]; optional `record_id`: str/int[R] (default `<patient_id>#<row>`).
Write one with `np.savez(path, ppg=..., fs=..., patient_id=...)`. Memory: numpy reads a whole array of the
file at a time, so this layout suits cohorts that fit in memory; use a table or WFDB directory otherwise.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from zipfile import BadZipFile

import numpy as np

from stsae.data.issues import DataIssues
from stsae.data.records import RawRecord, split_long
from stsae.errors import InputDataError

SOURCE = "npz"


def _load(path: Path, allow_pickle: bool) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=allow_pickle) as data:
            return {name: data[name] for name in data.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise InputDataError(f"data.npz_path: {path}: ppg is an object array; save ragged records as a "
                                 "concatenated ppg plus offsets, or set data.npz_allow_pickle: true if you "
                                 "trust the file") from None
        raise InputDataError(f"data.npz_path: {path} is not a readable .npz ({exc})") from None
    except (OSError, BadZipFile, EOFError) as exc:
        raise InputDataError(f"data.npz_path: {path} is not a readable .npz ({exc})") from None


def _signals(arrays: dict[str, np.ndarray], path: Path) -> list[np.ndarray]:
    ppg = arrays["ppg"]
    if ppg.dtype == object:
        return [np.asarray(x, dtype=np.float64).ravel() for x in ppg]
    if ppg.ndim == 2:
        rows = [np.asarray(x, dtype=np.float64) for x in ppg]
        return [x[: np.flatnonzero(np.isfinite(x))[-1] + 1] if np.isfinite(x).any() else x for x in rows]
    if ppg.ndim == 1 and "offsets" in arrays:
        offsets = np.asarray(arrays["offsets"], dtype=np.int64)
        if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != ppg.size or (np.diff(offsets) < 0).any():
            raise InputDataError(f"data.npz_path: {path}: offsets must rise from 0 to len(ppg) = {ppg.size}")
        return [np.asarray(ppg[a:b], dtype=np.float64) for a, b in itertools.pairwise(offsets)]
    raise InputDataError(f"data.npz_path: {path}: ppg has shape {ppg.shape}; expected [records, samples], "
                         "a 1-D array with offsets, or an object array")


def _per_record(arrays: dict[str, np.ndarray], name: str, count: int, path: Path) -> np.ndarray:
    values = np.asarray(arrays[name])
    if values.ndim == 0:
        return np.full(count, values.item())
    if values.shape != (count,):
        raise InputDataError(f"data.npz_path: {path}: {name} has shape {values.shape}, expected ({count},) "
                             "(one per record in ppg)")
    return values


def iter_npz_records(path: Path, allow_pickle: bool = False, max_record_s: float = 3600.0,
                     issues: DataIssues | None = None) -> Iterator[RawRecord]:
    """Records of an .npz file (layout in the module docstring); a record with a bad rate is skipped."""
    issues = issues if issues is not None else DataIssues()
    arrays = _load(path, allow_pickle)
    missing = [name for name in ("ppg", "fs", "patient_id") if name not in arrays]
    if missing:
        raise InputDataError(f"data.npz_path: {path} has no array(s) {', '.join(missing)} "
                             f"(arrays: {', '.join(sorted(arrays))})")
    signals = _signals(arrays, path)
    fs = _per_record(arrays, "fs", len(signals), path).astype(np.float64)
    patients = _per_record(arrays, "patient_id", len(signals), path)
    records = (_per_record(arrays, "record_id", len(signals), path) if "record_id" in arrays
               else np.array([f"{p}#{i}" for i, p in enumerate(patients)]))
    for signal, rate, patient, record in zip(signals, fs, patients, records, strict=True):
        if not (np.isfinite(rate) and rate > 0):
            issues.skip("bad_sampling_rate", path, f"{path} (record {record}): fs {rate} is not positive")
            continue
        yield from split_long(RawRecord(str(patient), str(record), signal, float(rate), SOURCE, origin=str(path)),
                              max_record_s)
