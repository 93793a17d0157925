"""data.source: wfdb — PhysioNet-style directories (RECORDS or a walk), single- and multi-segment records,
non-integer rates, case-insensitive PPG channel names."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from realformat_fixtures import Channel, known_digital, write_multisegment_record, write_wfdb_segment
from stsae.config import DataSection, WindowingSection
from stsae.data.issues import DataIssues
from stsae.data.sources import iter_source_records
from stsae.data.wfdb_dir import iter_wfdb_records, record_headers
from stsae.data.windowing import window_record

MIMIC_IV_FS = 124.945  # MIMIC-IV pleth: 2 samples per frame at 62.4725 Hz
START = datetime(2150, 1, 1, 8, 0, 0)


def _pulse_counts(n: int, fs: float) -> np.ndarray:
    phase = (np.arange(n) / fs * 1.2) % 1.0
    return np.round(1000 * np.exp(-((phase - 0.2) ** 2) / 0.005)).astype(np.int64)


def _tree(root: Path, with_records: bool) -> Path:
    """pat1/rec1: single segment, 25 s at 124.945 Hz, channel 'pleth'; pat2/master: two PLETH segments at
    125 Hz around a `~` gap (+ a layout segment), plus an ECG-only record pat3/ecg."""
    n = round(25 * MIMIC_IV_FS)
    write_wfdb_segment(root / "pat1", "rec1", MIMIC_IV_FS, [Channel("pleth", _pulse_counts(n, MIMIC_IV_FS), fmt="16")])
    segment = [Channel("PLETH", known_digital(1, 1500)), Channel("II", known_digital(2, 1500))]
    write_multisegment_record(root / "pat2", "master", 125.0, [("0001", segment), ("~", 250), ("0002", segment)],
                              START, layout_prefix="master")
    write_wfdb_segment(root / "pat3", "ecg", 125.0, [Channel("II", known_digital(3, 1500))])
    if with_records:
        (root / "RECORDS").write_text("pat1/\npat2/\npat3/\n")
        for patient, record in (("pat1", "rec1"), ("pat2", "master"), ("pat3", "ecg")):
            (root / patient / "RECORDS").write_text(f"{record}\n")
    return root


@pytest.mark.parametrize("with_records", [True, False], ids=["RECORDS", "walk"])
def test_records_are_found_and_segments_are_not_records(tmp_path: Path, with_records: bool) -> None:
    root = _tree(tmp_path, with_records)
    assert [h.relative_to(root).as_posix() for h in record_headers(root)] == [
        "pat1/rec1.hea", "pat2/master.hea", "pat3/ecg.hea"]


def test_single_and_multi_segment_records_with_non_integer_rate(tmp_path: Path) -> None:
    issues = DataIssues()
    records = list(iter_wfdb_records(_tree(tmp_path, True), ("PLETH",), issues=issues))
    assert [(r.patient_id, r.record_id, r.fs, r.signal.size) for r in records] == [
        ("pat1", "rec1#run0", MIMIC_IV_FS, round(25 * MIMIC_IV_FS)),
        ("pat2", "master#run0", 125.0, 1500), ("pat2", "master#run1", 125.0, 1500)]
    assert records[2].t_start_s == pytest.approx((1500 + 250) / 125.0)
    assert np.allclose(records[1].signal, known_digital(1, 1500) / 100.0)
    assert issues.skipped == {"no_ppg_channel": 1}  # pat3/ecg, named in the log


def test_non_integer_rate_record_windows_correctly(tmp_path: Path) -> None:
    record = next(iter_wfdb_records(_tree(tmp_path, False), ("Pleth",)))
    out = window_record(record, WindowingSection())
    assert out.windows.shape == (2, 1250)
    assert out.raw.shape[1] == round(10 * MIMIC_IV_FS)


def test_source_wfdb_dispatch_uses_ppg_channels_key(tmp_path: Path) -> None:
    root = _tree(tmp_path, True)
    records = list(iter_source_records(DataSection(source="wfdb", wfdb_root=root, ppg_channels=["pleth"])))
    assert [r.source for r in records] == ["wfdb"] * 3
    assert all(np.isnan(r.clinical.get("age", np.nan)) for r in records)


def test_listed_but_missing_record_is_skipped_naming_it(tmp_path: Path) -> None:
    root = _tree(tmp_path, True)
    (root / "pat1" / "RECORDS").write_text("rec1\nghost\n")
    issues = DataIssues()
    records = list(iter_wfdb_records(root, ("PLETH",), issues=issues))
    assert len(records) == 3
    assert issues.skipped["unreadable_header"] == 1 and "ghost.hea" in issues.examples["unreadable_header"][0]
