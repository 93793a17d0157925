"""iter_source_records: path checks with one-line errors, dispatch on data.source, max_records."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

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
from stsae.data.sources import iter_source_records
from stsae.errors import StsaeError


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
