"""MIMIC-III matched / MIMIC-IV waveform loaders against WFDB multi-segment records written with wrsamp."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from realformat_fixtures import (
    Channel,
    known_digital,
    mimic_iii_record_dir,
    mimic_iii_record_name,
    mimic_iv_record_dir,
    write_multisegment_record,
)
from stsae.data.mimic import iter_mimic_records, master_headers, subject_ids

START = datetime(2183, 4, 28, 17, 47)


def _mimic_iii_with_gap(root: Path, subject: int = 20) -> Path:
    """PLETH+II segment, a 250-frame gap, a PLETH-only segment, then an ECG-only segment."""
    return write_multisegment_record(
        mimic_iii_record_dir(root, subject), mimic_iii_record_name(subject, START), 125.0,
        [("0001", [Channel("II", known_digital(2, 1000)), Channel("PLETH", known_digital(1, 1000))]),
         ("~", 250),
         ("0002", [Channel("PLETH", known_digital(3, 500))]),
         ("0003", [Channel("PLETH", known_digital(4, 300))]),
         ("0004", [Channel("II", known_digital(5, 300))])],
        START, layout_prefix="3544749",
    )


def test_mimic_iii_gap_splits_record_into_exact_runs(tmp_path: Path) -> None:
    _mimic_iii_with_gap(tmp_path)
    records = list(iter_mimic_records(tmp_path, "mimic_iii"))
    name = mimic_iii_record_name(20, START)
    assert [r.record_id for r in records] == [f"{name}#run0", f"{name}#run1"]
    np.testing.assert_array_equal(records[0].signal, known_digital(1, 1000) / 100.0)
    expected = np.concatenate([known_digital(3, 500), known_digital(4, 300)]) / 100.0
    np.testing.assert_array_equal(records[1].signal, expected)


def test_run_start_times_and_rate_come_from_the_headers(tmp_path: Path) -> None:
    _mimic_iii_with_gap(tmp_path)
    records = list(iter_mimic_records(tmp_path, "mimic_iii"))
    assert [r.t_start_s for r in records] == [0.0, (1000 + 250) / 125.0]
    assert all(r.fs == 125.0 and r.patient_id == "p000020" and r.source == "mimic_iii" for r in records)


def test_mimic_iv_flac_record_reads_pleth_at_frame_rate_times_samples_per_frame(tmp_path: Path) -> None:
    directory = mimic_iv_record_dir(tmp_path, 10014354, 81739927)
    write_multisegment_record(directory, "81739927", 62.4725, [
        ("0000", [Channel("II", known_digital(1, 800, 2000), gain=200.0, spf=4, fmt="516"),
                  Channel("Pleth", known_digital(2, 400, 3000), gain=4000.0, spf=2, fmt="516")]),
        ("~", 31),
        ("0001", [Channel("Pleth", known_digital(3, 200, 3000), gain=4000.0, spf=2, fmt="516")]),
    ], START)
    records = list(iter_mimic_records(tmp_path, "mimic_iv"))
    assert [(r.patient_id, r.record_id) for r in records] == [
        ("p10014354", "81739927#run0"), ("p10014354", "81739927#run1")]
    assert records[0].fs == pytest.approx(124.945)
    np.testing.assert_array_equal(records[0].signal, known_digital(2, 400, 3000) / 4000.0)
    np.testing.assert_array_equal(records[1].signal, known_digital(3, 200, 3000) / 4000.0)
    assert records[1].t_start_s == pytest.approx((200 + 31) / 62.4725)


def test_flac_segment_files_are_compressed(tmp_path: Path) -> None:
    directory = mimic_iv_record_dir(tmp_path, 10000001, 80000001)
    write_multisegment_record(directory, "80000001", 62.4725, [
        ("0000", [Channel("Pleth", known_digital(2, 400, 3000), gain=4000.0, spf=2, fmt="516")])], START)
    (dat,) = directory.glob("*.dat")
    assert dat.read_bytes()[:4] == b"fLaC"


def test_record_without_ppg_channel_is_skipped_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_multisegment_record(mimic_iii_record_dir(tmp_path, 30), mimic_iii_record_name(30, START), 125.0,
                              [("0001", [Channel("II", known_digital(1, 500))])], START, layout_prefix="300")
    with caplog.at_level(logging.INFO, logger="stsae"):
        assert list(iter_mimic_records(tmp_path, "mimic_iii")) == []
    assert "no PPG channel" in caplog.text


def test_missing_signal_file_ends_the_run_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _mimic_iii_with_gap(tmp_path)
    (mimic_iii_record_dir(tmp_path, 20) / "3544749_0002.dat").unlink()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        records = list(iter_mimic_records(tmp_path, "mimic_iii"))
    assert [r.signal.size for r in records] == [1000, 300]
    assert "3544749_0002 signal unreadable" in caplog.text


def test_missing_segment_header_ends_the_run_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _mimic_iii_with_gap(tmp_path)
    (mimic_iii_record_dir(tmp_path, 20) / "3544749_0003.hea").unlink()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        records = list(iter_mimic_records(tmp_path, "mimic_iii"))
    assert [r.signal.size for r in records] == [1000, 500]
    assert "segment 3544749_0003 unreadable" in caplog.text


def test_unreadable_master_header_skips_the_record_with_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    master = _mimic_iii_with_gap(tmp_path)
    master.write_text("garbage\n")
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert list(iter_mimic_records(tmp_path, "mimic_iii")) == []
    assert "unreadable WFDB header" in caplog.text


def test_all_nan_run_is_skipped_with_logged_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_multisegment_record(mimic_iii_record_dir(tmp_path, 40), mimic_iii_record_name(40, START), 125.0,
                              [("0001", [Channel("PLETH", np.full(400, -128))])], START, layout_prefix="400")
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert list(iter_mimic_records(tmp_path, "mimic_iii")) == []
    assert "all NaN" in caplog.text


def test_long_runs_are_cut_at_max_record_s_without_losing_samples(tmp_path: Path) -> None:
    _mimic_iii_with_gap(tmp_path)
    records = list(iter_mimic_records(tmp_path, "mimic_iii", max_record_s=3.0))
    assert [r.signal.size for r in records] == [375, 375, 250, 375, 375, 50]
    first_run = np.concatenate([r.signal for r in records[:3]])
    np.testing.assert_array_equal(first_run, known_digital(1, 1000) / 100.0)
    assert len({r.record_id for r in records}) == len(records)


def test_master_headers_and_subject_ids_follow_the_directory_layout(tmp_path: Path) -> None:
    _mimic_iii_with_gap(tmp_path, subject=20)
    _mimic_iii_with_gap(tmp_path, subject=123456)
    assert subject_ids(tmp_path, "mimic_iii") == [20, 123456]
    assert [p.name for p in master_headers(tmp_path, "mimic_iii")] == [
        f"{mimic_iii_record_name(20, START)}.hea", f"{mimic_iii_record_name(123456, START)}.hea"]
