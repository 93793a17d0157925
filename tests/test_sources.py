"""iter_source_records: path checks with one-line errors, dispatch on data.source, max_records; the npz layouts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from realformat_fixtures import (
    Channel,
    PulseSegment,
    PulseSubject,
    known_digital,
    mimic_iv_record_dir,
    pulse_signal,
    write_mimic_iv_clinical,
    write_multisegment_record,
    write_pulsedb_subject,
)
from stsae.config import DataSection
from stsae.data.npz import iter_npz_records
from stsae.data.sources import iter_source_records
from stsae.errors import InputDataError, StsaeError


def _pulsedb_root(root: Path, n_subjects: int = 3) -> Path:
    for i in range(n_subjects):
        subject = PulseSubject(f"p{i:06d}", 50.0 + i, "F", [PulseSegment("1", 1, pulse_signal(i))])
        write_pulsedb_subject(root / "Segment_Files" / "PulseDB_MIMIC" / f"p{i:06d}.mat", subject)
    return root


def test_missing_root_raises_one_line_naming_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(StsaeError, match=rf"^data\.pulsedb_root: {missing} does not exist$"):
        iter_source_records(DataSection(source="pulsedb", pulsedb_root=missing))


def test_empty_root_raises_one_line_naming_key_and_path(tmp_path: Path) -> None:
    with pytest.raises(StsaeError, match=rf"^data\.mimic_iii_root: {tmp_path} is empty$"):
        iter_source_records(DataSection(source="mimic_iii", mimic_iii_root=tmp_path))


def test_unset_root_raises_naming_key(tmp_path: Path) -> None:
    with pytest.raises(StsaeError, match=r"^data\.mimic_iv_root: not set"):
        iter_source_records(DataSection(source="mimic_iv"))


def test_missing_subset_info_file_raises_naming_key(tmp_path: Path) -> None:
    cfg = DataSection(source="pulsedb", pulsedb_root=_pulsedb_root(tmp_path),
                      pulsedb_subset_info=tmp_path / "Train_Info.mat")
    with pytest.raises(StsaeError, match=r"^data\.pulsedb_subset_info: .*Train_Info\.mat does not exist$"):
        iter_source_records(cfg)


def test_synthetic_source_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(StsaeError, match=r"^data\.source: 'synthetic' is not a real-data source"):
        iter_source_records(DataSection(source="synthetic"))


def test_pulsedb_source_streams_pulsedb_records(tmp_path: Path) -> None:
    records = list(iter_source_records(DataSection(source="pulsedb", pulsedb_root=_pulsedb_root(tmp_path))))
    assert [r.patient_id for r in records] == ["mimic_p000000", "mimic_p000001", "mimic_p000002"]


def test_max_records_caps_the_stream(tmp_path: Path) -> None:
    cfg = DataSection(source="pulsedb", pulsedb_root=_pulsedb_root(tmp_path), max_records=2)
    assert len(list(iter_source_records(cfg))) == 2


def test_mimic_iv_source_links_clinical_tables(tmp_path: Path) -> None:
    start = datetime(2150, 6, 10, 12, 0)
    pleth = Channel("Pleth", known_digital(2, 400, 3000), gain=4000.0, spf=2, fmt="516")
    directory = mimic_iv_record_dir(tmp_path / "wdb", 10014354, 81739927)
    write_multisegment_record(directory, "81739927", 62.4725, [("0000", [pleth])], start)
    hosp = write_mimic_iv_clinical(
        tmp_path / "hosp",
        patients=[{"subject_id": 10014354, "gender": "F", "anchor_age": 70, "anchor_year": 2150}],
        admissions=[{"subject_id": 10014354, "hadm_id": 1, "admittime": "2150-06-10 00:00:00",
                     "dischtime": "2150-06-15 00:00:00"}],
        diagnoses=[{"subject_id": 10014354, "hadm_id": 1, "code": "I10", "version": 10}],
    )
    cfg = DataSection(source="mimic_iv", mimic_iv_root=tmp_path / "wdb", mimic_iv_clinical=hosp)
    (record,) = iter_source_records(cfg)
    assert record.clinical == pytest.approx({"age": 70.44, "sex": "F", "htn": 1, "t2d": 0}, abs=0.01)


def _npz_signals() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.standard_normal(n) for n in (1200, 800, 1500)]


def test_npz_2d_with_nan_padding_yields_trimmed_records(tmp_path: Path) -> None:
    signals = _npz_signals()
    padded = np.full((3, 1500), np.nan)
    for row, signal in zip(padded, signals, strict=True):
        row[: signal.size] = signal
    np.savez(tmp_path / "ppg.npz", ppg=padded, fs=np.array([100.0, 117.03, 125.0]), patient_id=["a", "a", "b"])
    records = list(iter_source_records(DataSection(source="npz", npz_path=tmp_path / "ppg.npz")))
    assert [(r.patient_id, r.record_id, r.fs, r.source) for r in records] == [
        ("a", "a#0", 100.0, "npz"), ("a", "a#1", 117.03, "npz"), ("b", "b#2", 125.0, "npz")]
    assert all(np.array_equal(r.signal, s) for r, s in zip(records, signals, strict=True))


def test_npz_concatenated_with_offsets_and_record_ids(tmp_path: Path) -> None:
    signals = _npz_signals()
    np.savez(tmp_path / "ppg.npz", ppg=np.concatenate(signals), offsets=np.cumsum([0, 1200, 800, 1500]),
             fs=62.5, patient_id=np.array([1, 2, 3]), record_id=np.array(["x", "y", "z"]))
    records = list(iter_npz_records(tmp_path / "ppg.npz"))
    assert [(r.patient_id, r.record_id, r.fs) for r in records] == [("1", "x", 62.5), ("2", "y", 62.5),
                                                                       ("3", "z", 62.5)]
    assert all(np.array_equal(r.signal, s) for r, s in zip(records, signals, strict=True))


def test_npz_object_array_needs_the_pickle_opt_in(tmp_path: Path) -> None:
    ragged = np.empty(3, dtype=object)
    ragged[:] = _npz_signals()
    np.savez(tmp_path / "ppg.npz", ppg=ragged, fs=100.0, patient_id=["a", "b", "c"])
    with pytest.raises(InputDataError, match=r"^data\.npz_path: .*object array.*npz_allow_pickle: true"):
        list(iter_npz_records(tmp_path / "ppg.npz"))
    assert [r.signal.size for r in iter_npz_records(tmp_path / "ppg.npz", allow_pickle=True)] == [1200, 800, 1500]


def test_npz_missing_or_mismatched_arrays_are_named(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", ppg=np.zeros((2, 10)), fs=100.0)
    with pytest.raises(InputDataError, match=r"a\.npz has no array\(s\) patient_id"):
        list(iter_npz_records(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", ppg=np.zeros((2, 10)), fs=[100.0, 50.0, 20.0], patient_id=["a", "b"])
    with pytest.raises(InputDataError, match=r"fs has shape \(3,\), expected \(2,\)"):
        list(iter_npz_records(tmp_path / "b.npz"))


def test_long_records_are_cut_at_max_record_s(tmp_path: Path) -> None:
    np.savez(tmp_path / "ppg.npz", ppg=np.zeros((1, 2500)), fs=100.0, patient_id=["a"])
    records = list(iter_npz_records(tmp_path / "ppg.npz", max_record_s=10.0))
    assert [(r.record_id, r.signal.size, r.t_start_s) for r in records] == [
        ("a#0#part0", 1000, 0.0), ("a#0#part1", 1000, 10.0), ("a#0#part2", 500, 20.0)]
