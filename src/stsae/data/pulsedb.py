"""PulseDB loader: MATLAB v7.3 segment files (HDF5) → gap-free RawRecords, one subject file at a time.

Layout read (PulseDB, Wang et al. 2023): `Segment_Files/PulseDB_{MIMIC,Vital}/pXXXXXX.mat`, each holding
a struct array `Subj_Wins` with one element per 10 s segment. In v7.3 files a struct array is an HDF5
group with one dataset per field; each dataset holds object references (one per element) into
`#refs#`: signals dereference to float64[1, 1250], numbers to [1, 1], text (`SubjectID`, `CaseID`,
`Gender`) to uint16 character codes. A subject with a single segment is a scalar struct, whose
field datasets hold the values directly.

Records: PulseDB states that, within one `CaseID`, a smaller `SegmentID` is earlier in time. Segments
of one case with consecutive SegmentIDs are therefore concatenated into one record, so downstream
windowing finds temporal pairs (z_t, z_{t+1}); any jump in SegmentID (a segment dropped by PulseDB's
curation) starts a new record. Each PulseDB segment is exactly one 10 s window, and records start on a
segment boundary, so a 10 s/10 s windowing never mixes two segments. Note that PulseDB min-max rescales
`PPG_Raw` per segment, so a concatenated record may step in level at segment boundaries.

Sampling rate: read from the per-sample time vector `T` when the file carries one; otherwise PulseDB's
published fixed rate (125 Hz) is used and the log says so once per file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stsae.data.issues import DataIssues, checked_age
from stsae.data.records import RawRecord
from stsae.errors import InputDataError

log = logging.getLogger(__name__)

PULSEDB_FS_HZ = 125.0
STRUCT_NAME = "Subj_Wins"
# Subj_Name in the Info files ends in "_0" (MIMIC-III subject) or "_1" (VitalDB subject).
INFO_SOURCE_FOLDER = {"0": "PulseDB_MIMIC", "1": "PulseDB_Vital"}


@dataclass(frozen=True)
class SegmentKey:
    """Where a segment sits: its struct-array element (0-based), case and temporal order in the case."""

    element: int
    case_id: str
    segment_id: int


def _decode_text(values: np.ndarray) -> str:
    """MATLAB char array (UTF-16 code units, any orientation) → str.

    Decoded as UTF-16 rather than unit by unit, so a character outside the BMP (an emoji, stored as a
    surrogate pair) becomes one character; an unpaired surrogate becomes U+FFFD instead of a string
    that cannot be written to parquet.
    """
    units = np.asarray(values).ravel().astype("<u2")
    return units[units != 0].tobytes().decode("utf-16-le", errors="replace")


def _is_empty(dataset: h5py.Dataset) -> bool:
    """MATLAB stores [] as a uint64 array of its dimensions flagged MATLAB_empty (attrs read only then)."""
    return dataset.dtype == np.uint64 and bool(dataset.attrs.get("MATLAB_empty", 0))


class _Field:
    """One struct field: its per-element object references, dereferenced only when an element is read.

    A scalar (1×1) struct stores the value itself instead of a reference; it counts as one element.
    """

    def __init__(self, handle: h5py.File, dataset: h5py.Dataset) -> None:
        self._handle = handle
        self._direct = dataset if dataset.dtype != h5py.ref_dtype else None
        self._refs = None if self._direct is not None else np.asarray(dataset[()]).ravel()

    def __len__(self) -> int:
        return 1 if self._refs is None else self._refs.size

    def __getitem__(self, element: int) -> h5py.Dataset | None:
        if self._refs is None:
            target = self._direct
        else:
            ref = self._refs[element]
            target = self._handle[ref] if ref else None
        return None if target is None or _is_empty(target) else target


def _as_text(dataset: h5py.Dataset | None) -> str | None:
    if dataset is None:
        return None
    values = dataset[()]
    if values.dtype == np.uint16:  # MATLAB char arrays are UTF-16 code units
        return _decode_text(values)
    number = np.asarray(values, dtype=np.float64).ravel()
    if number.size != 1 or not np.isfinite(number[0]):
        return None
    return str(int(number[0])) if float(number[0]).is_integer() else str(float(number[0]))


def _as_float(dataset: h5py.Dataset | None) -> float:
    """A numeric scalar, or NaN. A char value ('8') is parsed as text, never read as character codes."""
    if dataset is None:
        return float("nan")
    values = dataset[()]
    if values.dtype == np.uint16:
        try:
            return float(_decode_text(values))
        except ValueError:
            return float("nan")
    number = np.asarray(values, dtype=np.float64).ravel()
    return float(number[0]) if number.size == 1 else float("nan")


def _as_sex(text: str | None) -> str | None:
    """PulseDB Gender ('M'/'F', any case or spelt out) → "M"/"F"/None."""
    if not text:
        return None
    first = text.strip()[:1].upper()
    return first if first in ("M", "F") else None


class PulseDBSubject:
    """An open PulseDB subject file; reads one segment's signal at a time (h5py, lazily).

    Raises InputDataError naming the file when it is not a readable v7.3 .mat or lacks Subj_Wins or
    the signal field, so a corrupt download gives one clear line instead of an h5py traceback.
    """

    def __init__(self, path: Path, signal_field: str) -> None:
        self.path = path
        self.signal_field = signal_field
        try:
            self._handle = h5py.File(path, "r")
        except OSError as exc:
            raise InputDataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None
        try:
            group = self._handle.get(STRUCT_NAME)
            if not isinstance(group, h5py.Group):
                raise InputDataError(f"{path}: no '{STRUCT_NAME}' struct array (not a PulseDB segment file)")
            if signal_field not in group:
                seen = ", ".join(sorted(group)) or "none"
                raise InputDataError(f"{path}: '{STRUCT_NAME}' has no field '{signal_field}' (fields: {seen})")
            self._group = group
            self._fields: dict[str, _Field] = {}
            self._signals = _Field(self._handle, group[signal_field])
            self.n_segments = len(self._signals)
        except BaseException:
            self._handle.close()
            raise

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PulseDBSubject:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _value(self, name: str, element: int) -> h5py.Dataset | None:
        """The dataset of one element of one field (None when the field is absent or the value empty)."""
        if name not in self._fields:
            if name not in self._group:
                return None
            self._fields[name] = self._checked_field(name)
        return self._fields[name][element]

    def _checked_field(self, name: str) -> _Field:
        values = _Field(self._handle, self._group[name])
        if len(values) != self.n_segments:
            raise InputDataError(
                f"{self.path}: field '{name}' has {len(values)} elements but "
                f"'{self.signal_field}' has {self.n_segments}"
            )
        return values

    def subject_id(self) -> str:
        """SubjectID of the first segment (PulseDB: shared by all segments), else the file stem."""
        if self.n_segments == 0:
            return self.path.stem
        return _as_text(self._value("SubjectID", 0)) or self.path.stem

    def demographics(self) -> tuple[float, str | None]:
        """(age in years or NaN, sex "M"/"F"/None) from the first segment's Age and Gender."""
        if self.n_segments == 0:
            return float("nan"), None
        return _as_float(self._value("Age", 0)), _as_sex(_as_text(self._value("Gender", 0)))

    def segment_keys(self, keep: set[int] | None = None) -> list[SegmentKey]:
        """Keys of the segments to read, sorted by (CaseID, SegmentID); keep: 1-based elements (Info)."""
        keys = []
        for element in range(self.n_segments):
            if keep is not None and element + 1 not in keep:
                continue
            seg = _as_float(self._value("SegmentID", element))
            keys.append(SegmentKey(
                element=element,
                case_id=_as_text(self._value("CaseID", element)) or "",
                segment_id=int(seg) if np.isfinite(seg) else element + 1,
            ))
        return sorted(keys, key=lambda k: (k.case_id, k.segment_id, k.element))

    def signal(self, element: int) -> np.ndarray | None:
        """float64[n] signal of one element, or None when it is empty or not numeric."""
        dataset = self._signals[element]
        if dataset is None or dataset.dtype.kind not in "fiu":
            return None
        return np.asarray(dataset[()], dtype=np.float64).ravel()

    def has_time_vector(self) -> bool:
        return "T" in self._group

    def time_axis(self, element: int) -> tuple[float, float] | None:
        """(t_start_s, fs) from the element's per-sample time vector `T`, when it has one that is usable."""
        if not self.has_time_vector():
            return None
        dataset = self._value("T", element)
        if dataset is None:
            return None
        t = np.asarray(dataset[()], dtype=np.float64).ravel()
        step = np.diff(t)
        if t.size < 2 or not np.all(np.isfinite(t)) or not np.all(step > 0):
            return None
        return float(t[0]), float(np.round(1.0 / np.median(step), 6))


def consecutive_runs(keys: Iterable[SegmentKey]) -> Iterator[list[SegmentKey]]:
    """Split sorted keys into runs of one case with SegmentIDs increasing by exactly 1."""
    run: list[SegmentKey] = []
    for key in keys:
        if run and (key.case_id != run[-1].case_id or key.segment_id != run[-1].segment_id + 1):
            yield run
            run = []
        run.append(key)
    if run:
        yield run


def read_subset_info(path: Path) -> dict[tuple[str, str], set[int]]:
    """PulseDB Info .mat (e.g. Train_Info.mat) → {(folder, "pXXXXXX"): 1-based Subj_Wins elements}.

    The Info file holds one struct array (its variable name varies by subset) with `Subj_Name`
    ("p000160_0": subject + "_0" MIMIC / "_1" VitalDB) and `Subj_SegIDX` (1-based element index).
    """
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputDataError(
            f"data.pulsedb_subset_info: {path} is not a readable v7.3 .mat ({exc})"
        ) from None
    with handle:
        groups = [g for name, g in handle.items() if isinstance(g, h5py.Group) and name != "#refs#"]
        if len(groups) != 1 or not {"Subj_Name", "Subj_SegIDX"} <= set(groups[0]):
            raise InputDataError(
                f"data.pulsedb_subset_info: {path} has no struct array with Subj_Name and Subj_SegIDX"
            )
        name_field = _Field(handle, groups[0]["Subj_Name"])
        index_field = _Field(handle, groups[0]["Subj_SegIDX"])
        names = [_as_text(name_field[i]) or "" for i in range(len(name_field))]
        indices = [_as_float(index_field[i]) for i in range(len(index_field))]
    selection: dict[tuple[str, str], set[int]] = {}
    for name, index in zip(names, indices, strict=True):
        subject, _, tag = name.rpartition("_")
        if tag not in INFO_SOURCE_FOLDER or not np.isfinite(index):
            raise InputDataError(
                f"data.pulsedb_subset_info: {path}: bad Subj_Name/Subj_SegIDX ({name!r}, {index})"
            )
        selection.setdefault((INFO_SOURCE_FOLDER[tag], subject), set()).add(int(index))
    return selection


def _patient_id(subject: PulseDBSubject, folder: str) -> str:
    return f"{folder.removeprefix('PulseDB_').lower()}_{subject.subject_id()}"


def _subject_records(subject: PulseDBSubject, folder: str, keep: set[int] | None,
                     issues: DataIssues) -> Iterator[RawRecord]:
    age, sex = subject.demographics()
    patient_id = _patient_id(subject, folder)
    clinical: dict[str, object] = {"age": checked_age(age, subject.path, issues), "sex": sex, "htn": None,
                                   "t2d": None}
    if not subject.has_time_vector():
        log.info("%s: no time vector 'T'; using PulseDB's published %.0f Hz", subject.path, PULSEDB_FS_HZ)
    for run in consecutive_runs(subject.segment_keys(keep)):
        chunk: list[tuple[SegmentKey, np.ndarray]] = []
        for key in run:
            signal = subject.signal(key.element)
            if signal is None or signal.size == 0:
                issues.skip("empty_segment", subject.path, f"{subject.path}: segment {key.segment_id} of "
                            f"case {key.case_id!r} has no '{subject.signal_field}' samples")
                yield from _emit(chunk, subject, patient_id, clinical, folder, issues)
                chunk = []
            else:
                chunk.append((key, signal))
        yield from _emit(chunk, subject, patient_id, clinical, folder, issues)


def _emit(
    chunk: list[tuple[SegmentKey, np.ndarray]], subject: PulseDBSubject, patient_id: str,
    clinical: dict[str, object], folder: str, issues: DataIssues,
) -> Iterator[RawRecord]:
    """Concatenate one run of consecutive segments into a RawRecord (nothing for an empty/all-NaN run)."""
    if not chunk:
        return
    first = chunk[0][0]
    signal = np.concatenate([piece for _, piece in chunk])
    if not np.isfinite(signal).any():
        issues.skip("all_nan", subject.path,
                    f"{subject.path}: case {first.case_id!r} from segment {first.segment_id} is all NaN")
        return
    axis = subject.time_axis(first.element)
    if axis is None and subject.has_time_vector():
        issues.unknown("bad_time_vector", subject.path,
                       f"{subject.path}: case {first.case_id!r} segment {first.segment_id} has a time vector 'T' "
                       f"that is not finite and increasing; using PulseDB's published {PULSEDB_FS_HZ:g} Hz")
    t_start, fs = axis if axis is not None else (0.0, PULSEDB_FS_HZ)
    yield RawRecord(
        patient_id=patient_id,
        record_id=f"{patient_id}_{first.case_id or 'case'}_s{first.segment_id}",
        signal=signal,
        fs=fs,
        source="pulsedb",
        t_start_s=t_start,
        clinical=dict(clinical),
        extra={"pulsedb_folder": folder},
        origin=str(subject.path),
    )


def iter_pulsedb_records(
    root: Path,
    signal_field: str = "PPG_Raw",
    folders: Iterable[str] = ("PulseDB_MIMIC", "PulseDB_Vital"),
    subset_info: Path | None = None,
    issues: DataIssues | None = None,
) -> Iterator[RawRecord]:
    """Stream PulseDB subjects file by file: one RawRecord per run of consecutive segments.

    root: the PulseDB root holding Segment_Files/ (or Segment_Files itself). A file that cannot be read,
    or a second file of a SubjectID already read (a duplicate download would double its windows and
    temporal pairs), is skipped and recorded in `issues` naming the file; memory holds one run of one
    subject at a time.
    """
    issues = issues if issues is not None else DataIssues()
    segment_root = root / "Segment_Files" if (root / "Segment_Files").is_dir() else root
    selection = read_subset_info(subset_info) if subset_info is not None else None
    read_from: dict[str, Path] = {}
    for folder in folders:
        directory = segment_root / folder
        if not directory.is_dir():
            log.warning("data.pulsedb_root: %s has no %s/ folder; skipped", segment_root, folder)
            continue
        for path in sorted(directory.glob("p*.mat")):
            keep = None
            if selection is not None:
                keep = selection.get((folder, path.stem))
                if keep is None:
                    continue
            try:
                with PulseDBSubject(path, signal_field) as subject:
                    yield from _unique_subject_records(subject, folder, keep, read_from, issues)
            except InputDataError as exc:
                issues.skip("unreadable_file", path, str(exc))
            except (OSError, KeyError, ValueError) as exc:
                issues.skip("unreadable_file", path, f"{path}: unreadable HDF5 content ({exc})")


def _unique_subject_records(subject: PulseDBSubject, folder: str, keep: set[int] | None,
                            read_from: dict[str, Path], issues: DataIssues) -> Iterator[RawRecord]:
    """The subject's records, unless an earlier file already gave this patient (then the file is skipped)."""
    patient_id = _patient_id(subject, folder)
    if patient_id in read_from:
        issues.skip("duplicate_subject", subject.path, f"{subject.path}: SubjectID of patient {patient_id!r} "
                    f"was already read from {read_from[patient_id]}")
        return
    read_from[patient_id] = subject.path
    yield from _subject_records(subject, folder, keep, issues)
