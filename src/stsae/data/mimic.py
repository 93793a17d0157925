"""MIMIC-III matched subset and MIMIC-IV waveform loaders: WFDB multi-segment records → gap-free PPG runs.

Layouts read (PhysioNet):
- MIMIC-III Waveform Database Matched Subset: `pXX/pXXXXXX/pXXXXXX-YYYY-MM-DD-hh-mm.hea`, a multi-segment
  master header whose segments (`3000063_0001`, …, a `_layout` segment of length 0, and `~` gap
  segments) hold the signals; PPG channel `PLETH`, 125 Hz.
- MIMIC-IV Waveform Database: `waves/pNNN/pSSSSSSSS/RRRRRRRR/RRRRRRRR.hea`, the same multi-segment scheme
  with FLAC-compressed (format 516) segment files and several samples per frame (`Pleth` at 2 × the
  62.47 Hz frame rate); the sampling rate is always frame rate × samples per frame from the header.

A run is a stretch of consecutive segments that all carry the PPG channel at one rate; a `~` gap, a
segment without PPG, an unreadable segment or a change of rate ends it. Each run becomes a RawRecord
with record_id `<record>#run<k>`, so no window or temporal pair can span a gap. Runs longer than
`data.max_record_s` are cut into pieces (each its own record) and segments are read in slices of at
most that length, so memory is bounded by one record whatever the number or length of records.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import wfdb

from stsae.data.clinical import ClinicalTables
from stsae.data.issues import DataIssues, checked_age
from stsae.data.records import RawRecord

log = logging.getLogger(__name__)

# What wfdb / soundfile raise for missing, truncated or malformed headers and signal files.
WFDB_ERRORS = (OSError, ValueError, IndexError, KeyError, RuntimeError, EOFError)

_MIMIC_III_DIRS = (re.compile(r"p\d{2}$"), re.compile(r"p\d{6}$"))
_MIMIC_III_MASTER = re.compile(r"p\d{6}-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}\.hea$")
_MIMIC_IV_DIRS = (re.compile(r"p\d{3}$"), re.compile(r"p\d{8}$"), re.compile(r"\d+$"))


def _subdirs(directory: Path, pattern: re.Pattern[str]) -> list[Path]:
    """Sub-directories whose name matches `pattern`, sorted (one directory listing at a time)."""
    with os.scandir(directory) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and pattern.match(e.name))


def _subject_dirs(root: Path, source: str) -> Iterator[Path]:
    if source == "mimic_iii":
        for group in _subdirs(root, _MIMIC_III_DIRS[0]):
            yield from _subdirs(group, _MIMIC_III_DIRS[1])
    else:
        waves = root / "waves" if (root / "waves").is_dir() else root
        for group in _subdirs(waves, _MIMIC_IV_DIRS[0]):
            yield from _subdirs(group, _MIMIC_IV_DIRS[1])


def subject_ids(root: Path, source: str) -> list[int]:
    """Numeric subject ids of every subject directory (pXXXXXX → XXXXXX), for clinical filtering."""
    return [int(d.name[1:]) for d in _subject_dirs(root, source)]


def master_headers(root: Path, source: str) -> Iterator[Path]:
    """Master `.hea` paths of every waveform record under `root`, lazily, in sorted order."""
    for subject in _subject_dirs(root, source):
        if source == "mimic_iii":
            with os.scandir(subject) as entries:
                names = sorted(e.name for e in entries if _MIMIC_III_MASTER.match(e.name))
            yield from (subject / name for name in names)
        else:
            for record in _subdirs(subject, _MIMIC_IV_DIRS[2]):
                header = record / f"{record.name}.hea"
                if header.is_file():
                    yield header


class _RunBuilder:
    """Collects PPG slices of the current gap-free run and turns each finished run into a RawRecord."""

    def __init__(self, header_path: Path, patient_id: str, source: str, issues: DataIssues) -> None:
        self.header_path = header_path
        self.patient_id = patient_id
        self.source = source
        self.issues = issues
        self.n_runs = 0
        self.fs = 0.0
        self.t_start_s = 0.0
        self.pieces: list[np.ndarray] = []
        self.n = 0

    def add(self, samples: np.ndarray, fs: float, t_start_s: float) -> None:
        if not self.pieces:
            self.fs, self.t_start_s = fs, t_start_s
        self.pieces.append(samples)
        self.n += samples.size

    def flush(self) -> Iterator[RawRecord]:
        """Yield the collected run as a record (nothing if empty; all-NaN runs are skipped, logged)."""
        if not self.pieces:
            return
        signal = np.concatenate(self.pieces)
        self.pieces, self.n = [], 0
        if not np.isfinite(signal).any():
            self.issues.skip("all_nan", self.header_path,
                             f"{self.header_path}: PPG run at {self.t_start_s:.1f} s is all NaN")
            return
        record_id = f"{self.header_path.stem}#run{self.n_runs}"
        self.n_runs += 1
        yield RawRecord(patient_id=self.patient_id, record_id=record_id, signal=signal, fs=self.fs,
                        source=self.source, t_start_s=self.t_start_s, origin=str(self.header_path))


def _segments(header: wfdb.Record | wfdb.MultiRecord, stem: Path) -> list[tuple[str, int]]:
    """(segment name, length in frames) of a multi-segment record; a single-segment record is its own."""
    if isinstance(header, wfdb.MultiRecord):
        return list(zip(header.seg_name, (int(n) for n in header.seg_len), strict=True))
    return [(stem.name, int(header.sig_len or 0))]


def _ppg_channel(sig_names: Sequence[str] | None, channels: Sequence[str]) -> int | None:
    """Index of the first of `channels` (case-insensitive: PLETH, Pleth and pleth all occur) in sig_names."""
    names = [name.lower() for name in sig_names or []]
    for wanted in channels:
        if wanted.lower() in names:
            return names.index(wanted.lower())
    return None


def _frame_rate(header: wfdb.Record | wfdb.MultiRecord, header_path: Path, issues: DataIssues) -> float | None:
    """The master header's frame rate, or None (issue recorded) when it is not a positive number."""
    fs = float(header.fs or 0.0)
    if np.isfinite(fs) and fs > 0:
        return fs
    issues.skip("bad_sampling_rate", header_path, f"{header_path}: sampling rate {header.fs} is not positive")
    return None


def _segment_header(segment: Path, header_path: Path, frame_fs: float,
                    issues: DataIssues) -> wfdb.Record | None:
    """A data segment's header, or None (issue recorded) when it is missing, broken or disagrees with the
    master's frame rate (WFDB requires one rate for all segments; a mismatch means a damaged header)."""
    try:
        seg_header = wfdb.rdheader(str(segment))
    except WFDB_ERRORS as exc:
        issues.skip("missing_segment", segment, f"{header_path}: segment {segment.name} unreadable ({exc})")
        return None
    if not np.isclose(float(seg_header.fs or 0.0), frame_fs):
        issues.skip("sampling_rate_mismatch", segment,
                    f"{segment}.hea: sampling rate {seg_header.fs} differs from the master header's "
                    f"{frame_fs:g} Hz ({header_path})")
        return None
    return seg_header


def iter_record_runs(
    header_path: Path, channels: Sequence[str], max_record_s: float, source: str, patient_id: str,
    issues: DataIssues | None = None,
) -> Iterator[RawRecord]:
    """Gap-free PPG runs of one (multi-segment) WFDB record, each as a RawRecord without clinical data.

    Skips, recording the reason in `issues`, a record whose header cannot be read, has no positive
    sampling rate or has no PPG channel (naming the channels it has), and segments whose header or
    signal file is missing or broken or whose rate disagrees with the master (they end the current run).
    """
    issues = issues if issues is not None else DataIssues()
    stem = header_path.with_suffix("")
    try:
        header = wfdb.rdheader(str(stem))
    except WFDB_ERRORS as exc:
        issues.skip("unreadable_header", header_path, f"{header_path}: unreadable WFDB header ({exc})")
        return
    frame_fs = _frame_rate(header, header_path, issues)
    if frame_fs is None:
        return
    builder = _RunBuilder(header_path, patient_id, source, issues)
    seen: list[str] = []
    offset = 0
    for name, length in _segments(header, stem):
        start_s = offset / frame_fs
        offset += length
        if name == "~" or length == 0:
            yield from builder.flush()
            continue
        segment = stem.parent / name
        seg_header = header if segment == stem else _segment_header(segment, header_path, frame_fs, issues)
        index = None if seg_header is None else _ppg_channel(seg_header.sig_name, channels)
        if seg_header is not None:
            seen += [n for n in seg_header.sig_name or [] if n not in seen]
        if seg_header is None or index is None:
            yield from builder.flush()
            continue
        yield from _read_segment(builder, segment, seg_header, index, length, start_s, frame_fs, max_record_s)
    yield from builder.flush()
    if seen and _ppg_channel(seen, channels) is None:
        issues.skip("no_ppg_channel", header_path, f"{header_path}: no PPG channel ({'/'.join(channels)}) in "
                    f"any segment; channels seen: {', '.join(seen)}")


def _read_segment(builder: _RunBuilder, segment: Path, seg_header: wfdb.Record, index: int, length: int,
                  start_s: float, frame_fs: float, max_record_s: float) -> Iterator[RawRecord]:
    """Read one segment's PPG channel in slices of at most max_record_s into the current run."""
    spf = int((seg_header.samps_per_frame or [1] * (index + 1))[index] or 1)
    fs = frame_fs * spf
    if builder.n and builder.fs != fs:
        yield from builder.flush()
    limit = max(spf, int(max_record_s * fs))
    frame = 0
    while frame < length:
        take = max(1, min(length - frame, (limit - builder.n) // spf))
        try:
            read = wfdb.rdrecord(str(segment), sampfrom=frame, sampto=frame + take,
                                 channel_names=[seg_header.sig_name[index]], smooth_frames=False)
        except WFDB_ERRORS as exc:
            builder.issues.skip("missing_segment", segment, f"{builder.header_path}: segment {segment.name} "
                                f"signal unreadable ({exc}); run ended")
            yield from builder.flush()
            return
        builder.add(np.asarray(read.e_p_signal[0], dtype=np.float64), fs, start_s + frame / frame_fs)
        frame += take
        if builder.n >= limit:
            yield from builder.flush()


def _record_start(header_path: Path) -> datetime | None:
    try:
        header = wfdb.rdheader(str(header_path.with_suffix("")))
    except WFDB_ERRORS:
        return None
    return header.base_datetime


def iter_mimic_records(
    root: Path,
    source: str,
    channels: Sequence[str] = ("PLETH", "Pleth"),
    max_record_s: float = 3600.0,
    clinical: ClinicalTables | None = None,
    issues: DataIssues | None = None,
) -> Iterator[RawRecord]:
    """Stream every PPG run of a MIMIC-III matched / MIMIC-IV waveform tree, record by record.

    source: "mimic_iii" or "mimic_iv" (directory layout and record naming). clinical: tables from
    stsae.data.clinical; when given, each record gets age/sex/htn/t2d and `extra["age_capped"]`, and the
    number of records without a clinical match is logged at the end. Problems are recorded in `issues`
    (one summary per run instead of one warning per missing segment); an implausible clinical age
    becomes unknown, naming the record's header.
    """
    issues = issues if issues is not None else DataIssues()
    total = unmatched = 0
    for header_path in master_headers(root, source):
        patient = header_path.parent.name if source == "mimic_iii" else header_path.parent.parent.name
        facts = None
        if clinical is not None:
            start = _record_start(header_path)
            facts = clinical.lookup(int(patient[1:]), start)
        for raw in iter_record_runs(header_path, channels, max_record_s, source, patient, issues):
            total += 1
            if facts is not None:
                raw.clinical, raw.extra = dict(facts[0]), dict(facts[1])
                raw.clinical["age"] = checked_age(float(raw.clinical["age"]), header_path, issues)
            else:
                raw.clinical = {"age": float("nan"), "sex": None, "htn": None, "t2d": None}
                if clinical is not None:
                    raw.extra = {"age_capped": False}
                    unmatched += 1
            yield raw
    if clinical is not None:
        log.info("%s: %d of %d records had no clinical match", source, unmatched, total)

