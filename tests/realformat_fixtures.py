"""Writers of small fixtures in the real on-disk formats (MATLAB v7.3, WFDB, MIMIC CSVs), for tests.

Signals are written on the ADC grid (integer / gain) so a WFDB round trip is exact and tests can compare
with `np.array_equal`-tight tolerances.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import wfdb

MATLAB_USERBLOCK = 512
_MATLAB_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
)


# --- MATLAB v7.3 -----------------------------------------------------------------------------------------

def _write_matlab_value(refs: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    """One MATLAB value as MATLAB stores it: column vectors as [1, n], char as uint16 [n, 1]."""
    if value is None:
        dataset = refs.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
        dataset.attrs["MATLAB_class"] = np.bytes_("double")
        dataset.attrs["MATLAB_empty"] = np.uint8(1)
    elif isinstance(value, str):
        codes = np.frombuffer(value.encode("utf-16-le"), dtype="<u2").reshape(-1, 1)  # MATLAB: UTF-16 units
        dataset = refs.create_dataset(name, data=codes)
        dataset.attrs["MATLAB_class"] = np.bytes_("char")
        dataset.attrs["MATLAB_int_decode"] = np.int32(2)
    else:
        dataset = refs.create_dataset(name, data=np.asarray(value, dtype=np.float64).reshape(1, -1))
        dataset.attrs["MATLAB_class"] = np.bytes_("double")
    return dataset


def write_matlab_struct_array(
    path: Path, variable: str, elements: Sequence[dict[str, Any]], scalar: bool = False
) -> Path:
    """A MATLAB v7.3 .mat holding one struct array `variable` (N×1 in MATLAB, (1, N) in HDF5).

    Layout as MATLAB writes it: 512-byte userblock with the MAT header text; a group `variable` with
    MATLAB_class="struct" and MATLAB_fields; per field a (1, N) dataset of object references into
    `#refs#`. scalar=True with one element writes a 1×1 struct, whose fields hold values directly.
    Values: float / ndarray (double), str (char), None (empty []).
    """
    fields = list(elements[0])
    with h5py.File(path, "w", userblock_size=MATLAB_USERBLOCK) as handle:
        group = handle.create_group(variable)
        group.attrs["MATLAB_class"] = np.bytes_("struct")
        field_names = np.empty(len(fields), dtype=h5py.vlen_dtype(np.dtype("S1")))
        for i, name in enumerate(fields):
            field_names[i] = np.array(list(name.encode()), dtype="S1")
        group.attrs.create("MATLAB_fields", field_names, dtype=h5py.vlen_dtype(np.dtype("S1")))
        if scalar:
            if len(elements) != 1:
                raise ValueError("a scalar struct has exactly one element")
            for name in fields:
                _write_matlab_value(group, name, elements[0][name])
        else:
            refs = handle.create_group("#refs#")
            counter = 0
            for name in fields:
                references = np.empty((1, len(elements)), dtype=h5py.ref_dtype)
                for i, element in enumerate(elements):
                    references[0, i] = _write_matlab_value(refs, f"r{counter}", element[name]).ref
                    counter += 1
                group.create_dataset(name, data=references, dtype=h5py.ref_dtype)
    with open(path, "r+b") as handle:
        handle.write(_MATLAB_HEADER.ljust(116, b" ") + bytes(8) + b"\x00\x02" + b"IM")
    return path


@dataclass
class PulseSegment:
    """One PulseDB 10 s segment: its case, temporal order and PPG samples (float64[1250])."""

    case_id: str
    segment_id: int
    ppg: np.ndarray
    t0: float | None = None


@dataclass
class PulseSubject:
    subject_id: str
    age: float
    gender: str
    segments: list[PulseSegment] = field(default_factory=list)


def pulse_signal(seed: int, n: int = 1250) -> np.ndarray:
    """A known, per-seed distinct float64[n] PPG-like signal in [0, 1] (PulseDB rescales to that range)."""
    t = np.arange(n) / 125.0
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * (1.0 + 0.05 * seed) * t + seed)
    return np.round(wave, 6)


def write_pulsedb_subject(
    path: Path, subject: PulseSubject, fs: float = 125.0, with_time: bool = True, scalar: bool = False
) -> Path:
    """A PulseDB segment file (Subj_Wins struct array) with the fields the loader reads and a few more."""
    elements = []
    for seg in subject.segments:
        n = seg.ppg.size
        element: dict[str, Any] = {
            "SubjectID": subject.subject_id,
            "CaseID": seg.case_id,
            "SegmentID": float(seg.segment_id),
            "Age": subject.age,
            "Gender": subject.gender,
            "PPG_Raw": seg.ppg,
            "PPG_F": seg.ppg * 2.0,
            "ECG_F": np.zeros(n),
            "ABP_Raw": np.full(n, 90.0),
            "SegSBP": 120.0,
            "SegDBP": 80.0,
        }
        if with_time:
            start = seg.t0 if seg.t0 is not None else (seg.segment_id - 1) * n / fs
            element["T"] = start + np.arange(n) / fs
        elements.append(element)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_matlab_struct_array(path, "Subj_Wins", elements, scalar=scalar)


def write_pulsedb_info(path: Path, variable: str, entries: Sequence[tuple[str, int]]) -> Path:
    """A PulseDB Info .mat: entries of (Subj_Name like "p000001_0", 1-based Subj_SegIDX)."""
    elements = [{"Subj_Name": name, "Subj_SegIDX": float(idx), "Seg_SBP": 120.0} for name, idx in entries]
    return write_matlab_struct_array(path, variable, elements)


# --- WFDB ------------------------------------------------------------------------------------------------

@dataclass
class Channel:
    """One WFDB signal: name, digital samples (int), gain, samples per frame, storage format."""

    name: str
    digital: np.ndarray
    gain: float = 100.0
    spf: int = 1
    fmt: str = "80"
    units: str = "NU"

    @property
    def physical(self) -> np.ndarray:
        return self.digital.astype(np.float64) / self.gain


def known_digital(seed: int, n: int, amplitude: int = 100) -> np.ndarray:
    """Known integer samples (a per-seed sine) that fit 8-bit WFDB storage."""
    return np.round(amplitude * np.sin(np.arange(n) / (5.0 + seed))).astype(np.int64)


def write_wfdb_segment(directory: Path, name: str, frame_fs: float, channels: Sequence[Channel]) -> Path:
    """An ordinary WFDB record (one segment) via wfdb.wrsamp; returns its header path."""
    directory.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name, fs=frame_fs, units=[c.units for c in channels], sig_name=[c.name for c in channels],
        e_d_signal=[c.digital.astype(np.int64) for c in channels],
        samps_per_frame=[c.spf for c in channels], fmt=[c.fmt for c in channels],
        adc_gain=[c.gain for c in channels], baseline=[0] * len(channels), write_dir=str(directory),
    )
    return directory / f"{name}.hea"


def write_layout_header(directory: Path, name: str, frame_fs: float, sig_names: Sequence[str]) -> Path:
    """A zero-length layout segment listing every signal of a variable-layout record."""
    lines = [f"{name} {len(sig_names)} {frame_fs:g} 0"]
    lines += [f"~ 0 100/NU 8 0 0 0 0 {s}" for s in sig_names]
    path = directory / f"{name}.hea"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_master_header(
    directory: Path, name: str, frame_fs: float, n_sig: int, segments: Sequence[tuple[str, int]],
    start: datetime,
) -> Path:
    """A multi-segment master header: `name/nseg nsig fs nsamp time date` then one line per segment."""
    total = sum(length for _, length in segments)
    stamp = f"{start:%H:%M:%S}.000 {start:%d/%m/%Y}"
    lines = [f"{name}/{len(segments)} {n_sig} {frame_fs:g} {total} {stamp}"]
    lines += [f"{seg} {length}" for seg, length in segments]
    path = directory / f"{name}.hea"
    path.write_text("\n".join(lines) + "\n")
    return path


Piece = tuple[str, Sequence[Channel]] | tuple[str, int]
"""A segment of a multi-segment record: (suffix, channels) for data, ("~", n_frames) for a gap."""


def write_multisegment_record(
    directory: Path, name: str, frame_fs: float, pieces: Sequence[Piece], start: datetime,
    layout_prefix: str | None = None,
) -> Path:
    """Write every data segment with wrsamp, then the master header; returns the master header path."""
    segments: list[tuple[str, int]] = []
    sig_names: list[str] = []
    prefix = layout_prefix or name
    if layout_prefix is not None:
        segments.append((f"{prefix}_layout", 0))
    for suffix, content in pieces:
        if suffix == "~":
            segments.append(("~", int(content)))
            continue
        channels = list(content)
        seg_name = f"{prefix}_{suffix}"
        write_wfdb_segment(directory, seg_name, frame_fs, channels)
        segments.append((seg_name, int(channels[0].digital.size // channels[0].spf)))
        sig_names += [c.name for c in channels if c.name not in sig_names]
    if layout_prefix is not None:
        write_layout_header(directory, f"{prefix}_layout", frame_fs, sig_names)
    return write_master_header(directory, name, frame_fs, len(sig_names), segments, start)


def mimic_iii_record_dir(root: Path, subject: int) -> Path:
    return root / f"p{subject:06d}"[:3] / f"p{subject:06d}"


def mimic_iii_record_name(subject: int, start: datetime) -> str:
    return f"p{subject:06d}-{start:%Y-%m-%d-%H-%M}"


def mimic_iv_record_dir(root: Path, subject: int, record: int) -> Path:
    return root / "waves" / f"p{subject:08d}"[:4] / f"p{subject:08d}" / f"{record:08d}"


# --- clinical CSVs -------------------------------------------------------------------------------------

def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    """CSV (gzip-compressed when the name ends in .gz), as PhysioNet distributes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = frame.to_csv(index=False)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def write_mimic_iii_clinical(
    directory: Path, patients: list[dict[str, Any]], admissions: list[dict[str, Any]],
    diagnoses: list[dict[str, Any]],
) -> Path:
    """PATIENTS.csv / ADMISSIONS.csv / DIAGNOSES_ICD.csv with MIMIC-III's upper-case columns."""
    write_csv(directory / "PATIENTS.csv", pd.DataFrame(
        [{"ROW_ID": i, "SUBJECT_ID": p["subject_id"], "GENDER": p["gender"], "DOB": p["dob"],
          "DOD": "", "EXPIRE_FLAG": 0} for i, p in enumerate(patients)]))
    write_csv(directory / "ADMISSIONS.csv", pd.DataFrame(
        [{"ROW_ID": i, "SUBJECT_ID": a["subject_id"], "HADM_ID": a["hadm_id"], "ADMITTIME": a["admittime"],
          "DISCHTIME": a["dischtime"], "ADMISSION_TYPE": "EMERGENCY"} for i, a in enumerate(admissions)]))
    write_csv(directory / "DIAGNOSES_ICD.csv", pd.DataFrame(
        [{"ROW_ID": i, "SUBJECT_ID": d["subject_id"], "HADM_ID": d["hadm_id"], "SEQ_NUM": i + 1,
          "ICD9_CODE": d["code"]} for i, d in enumerate(diagnoses)],
        columns=["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"]))
    return directory


def write_mimic_iv_clinical(
    directory: Path, patients: list[dict[str, Any]], admissions: list[dict[str, Any]],
    diagnoses: list[dict[str, Any]],
) -> Path:
    """hosp/patients.csv.gz, admissions.csv.gz, diagnoses_icd.csv.gz with MIMIC-IV's lower-case columns."""
    write_csv(directory / "patients.csv.gz", pd.DataFrame(
        [{"subject_id": p["subject_id"], "gender": p["gender"], "anchor_age": p["anchor_age"],
          "anchor_year": p["anchor_year"], "anchor_year_group": "2017 - 2019", "dod": ""} for p in patients]))
    write_csv(directory / "admissions.csv.gz", pd.DataFrame(
        [{"subject_id": a["subject_id"], "hadm_id": a["hadm_id"], "admittime": a["admittime"],
          "dischtime": a["dischtime"], "deathtime": ""} for a in admissions]))
    write_csv(directory / "diagnoses_icd.csv.gz", pd.DataFrame(
        [{"subject_id": d["subject_id"], "hadm_id": d["hadm_id"], "seq_num": i + 1, "icd_code": d["code"],
          "icd_version": d["version"]} for i, d in enumerate(diagnoses)],
        columns=["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]))
    return directory

