"""PulseDB loader against MATLAB v7.3 fixtures laid out like the real segment and Info files."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from realformat_fixtures import (
    PulseSegment,
    PulseSubject,
    pulse_signal,
    write_pulsedb_info,
    write_pulsedb_subject,
)
from stsae.data.pulsedb import SegmentKey, consecutive_runs, iter_pulsedb_records, read_subset_info
from stsae.errors import InputDataError


def _subject_file(root: Path, folder: str, subject: PulseSubject, **kwargs: object) -> Path:
    return write_pulsedb_subject(root / "Segment_Files" / folder / f"{subject.subject_id}.mat", subject,
                                 **kwargs)


def _two_case_subject() -> PulseSubject:
    return PulseSubject("p000001", 63.0, "M", [
        PulseSegment("3000063", 1, pulse_signal(1)),
        PulseSegment("3000063", 2, pulse_signal(2)),
        PulseSegment("3000063", 4, pulse_signal(3)),
        PulseSegment("3000100", 1, pulse_signal(4)),
    ])


def test_consecutive_segments_of_one_case_are_concatenated_exactly(tmp_path: Path) -> None:
    _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject())
    first = next(iter_pulsedb_records(tmp_path))
    assert first.record_id == "mimic_p000001_3000063_s1"
    np.testing.assert_array_equal(first.signal, np.concatenate([pulse_signal(1), pulse_signal(2)]))
    assert first.signal.dtype == np.float64


def test_segment_id_jump_or_new_case_starts_a_new_record(tmp_path: Path) -> None:
    _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject())
    records = list(iter_pulsedb_records(tmp_path))
    assert [r.record_id for r in records] == [
        "mimic_p000001_3000063_s1", "mimic_p000001_3000063_s4", "mimic_p000001_3000100_s1"]
    np.testing.assert_array_equal(records[1].signal, pulse_signal(3))
    np.testing.assert_array_equal(records[2].signal, pulse_signal(4))


def test_age_sex_fs_and_start_time_come_from_the_file(tmp_path: Path) -> None:
    _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject(), fs=100.0)
    records = list(iter_pulsedb_records(tmp_path))
    assert all(r.clinical == {"age": 63.0, "sex": "M", "htn": None, "t2d": None} for r in records)
    assert all(r.fs == pytest.approx(100.0) for r in records)
    assert records[1].t_start_s == pytest.approx(3 * 1250 / 100.0)
    assert {r.patient_id for r in records} == {"mimic_p000001"}
    assert all(r.source == "pulsedb" for r in records)


def test_scalar_struct_without_time_vector_uses_published_rate_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    subject = PulseSubject("p000002", 41.0, "F", [PulseSegment("12", 7, pulse_signal(5))])
    _subject_file(tmp_path, "PulseDB_Vital", subject, with_time=False, scalar=True)
    with caplog.at_level(logging.INFO, logger="stsae"):
        (record,) = iter_pulsedb_records(tmp_path)
    np.testing.assert_array_equal(record.signal, pulse_signal(5))
    assert (record.patient_id, record.fs, record.clinical["sex"]) == ("vital_p000002", 125.0, "F")
    assert "no time vector 'T'" in caplog.text


def test_ppg_f_field_is_selectable(tmp_path: Path) -> None:
    _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject())
    record = next(iter_pulsedb_records(tmp_path, signal_field="PPG_F"))
    np.testing.assert_array_equal(record.signal, 2.0 * np.concatenate([pulse_signal(1), pulse_signal(2)]))


def test_subset_info_selects_subjects_and_segments(tmp_path: Path) -> None:
    _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject())
    _subject_file(tmp_path, "PulseDB_Vital", PulseSubject("p000009", 30.0, "F",
                                                          [PulseSegment("1", 1, pulse_signal(9))]))
    info = write_pulsedb_info(tmp_path / "Train_Info.mat", "Train_Info", [("p000001_0", 2), ("p000001_0", 3)])
    records = list(iter_pulsedb_records(tmp_path, subset_info=info))
    assert [r.record_id for r in records] == ["mimic_p000001_3000063_s2", "mimic_p000001_3000063_s4"]


def test_read_subset_info_maps_source_tag_to_folder(tmp_path: Path) -> None:
    info = write_pulsedb_info(tmp_path / "CalFree_Test_Info.mat", "Subset",
                              [("p000001_0", 5), ("p000777_1", 2), ("p000777_1", 3)])
    assert read_subset_info(info) == {("PulseDB_MIMIC", "p000001"): {5}, ("PulseDB_Vital", "p000777"): {2, 3}}


def test_info_file_without_subj_name_raises_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "Info.mat"
    with h5py.File(bad, "w") as handle:
        handle.create_group("Subset").create_dataset("Other", data=[1.0])
    with pytest.raises(InputDataError, match=r"data\.pulsedb_subset_info: .*Subj_Name") as err:
        read_subset_info(bad)
    assert "\n" not in str(err.value)


def test_truncated_mat_is_skipped_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _subject_file(tmp_path, "PulseDB_MIMIC", _two_case_subject())
    path.write_bytes(path.read_bytes()[:2000])
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert list(iter_pulsedb_records(tmp_path)) == []
    assert f"{path}" in caplog.text and "skipped" in caplog.text


def test_mat_without_subj_wins_is_skipped_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "Segment_Files" / "PulseDB_MIMIC" / "p000003.mat"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("Subset", data=np.zeros(3))
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert list(iter_pulsedb_records(tmp_path)) == []
    assert "no 'Subj_Wins' struct array" in caplog.text


def test_all_nan_run_is_skipped_with_logged_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    subject = PulseSubject("p000004", 50.0, "M", [PulseSegment("1", 1, np.full(1250, np.nan)),
                                                  PulseSegment("2", 1, pulse_signal(2))])
    _subject_file(tmp_path, "PulseDB_MIMIC", subject)
    with caplog.at_level(logging.WARNING, logger="stsae"):
        records = list(iter_pulsedb_records(tmp_path))
    assert [r.record_id for r in records] == ["mimic_p000004_2_s1"]
    assert "all NaN" in caplog.text


def test_consecutive_runs_split_on_case_and_id_gaps() -> None:
    keys = [SegmentKey(0, "a", 1), SegmentKey(1, "a", 2), SegmentKey(2, "a", 3), SegmentKey(3, "b", 4),
            SegmentKey(4, "b", 6)]
    assert [[k.element for k in run] for run in consecutive_runs(keys)] == [[0, 1, 2], [3], [4]]
