"""Bad records in real sources: one record never aborts a cohort, nothing wrong passes silently.

Each case writes a small source in its real on-disk format (PulseDB MATLAB v7.3, MIMIC WFDB, MIMIC
CSVs), plants one defect a reviewer reproduced, and asserts what happens to it: skipped or set unknown
with a logged reason naming the file, counted in the per-run summary, and the good records untouched.
"""

from __future__ import annotations

import gzip
import json
import logging
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from realformat_fixtures import (
    Channel,
    PulseSegment,
    PulseSubject,
    known_digital,
    mimic_iii_record_dir,
    mimic_iii_record_name,
    pulse_signal,
    write_matlab_struct_array,
    write_mimic_iii_clinical,
    write_mimic_iv_clinical,
    write_multisegment_record,
    write_pulsedb_subject,
)
from stsae.cli import app
from stsae.data.clinical import load_mimic_iii_clinical, load_mimic_iv_clinical
from stsae.data.issues import DataIssues
from stsae.data.mimic import iter_mimic_records, iter_record_runs
from stsae.data.pulsedb import iter_pulsedb_records
from stsae.errors import StsaeError
from stsae.models.papagei import PaPaGeiS, load_papagei_s
from stsae.rundir import RunDir

TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
START = datetime(2150, 1, 1, 8, 0)
CHANNELS = ("PLETH", "Pleth")


# ---- PulseDB ---------------------------------------------------------------------------------------------

def _subject(sid: str, age: object = 50.0, n_segments: int = 2, seed: int = 0) -> PulseSubject:
    segments = [PulseSegment("c1", s, pulse_signal(seed + s)) for s in range(1, n_segments + 1)]
    return PulseSubject(sid, age, "F", segments)  # type: ignore[arg-type]


def _pulsedb(folder: Path, *subjects: tuple[str, PulseSubject]) -> Path:
    """Segment_Files/PulseDB_MIMIC/<file> for each (file stem, subject); returns the PulseDB root."""
    for stem, subject in subjects:
        write_pulsedb_subject(folder / "Segment_Files" / "PulseDB_MIMIC" / f"{stem}.mat", subject)
    return folder


def _read_pulsedb(root: Path, issues: DataIssues) -> list:
    return list(iter_pulsedb_records(root, folders=["PulseDB_MIMIC"], issues=issues))


def test_second_file_with_the_same_subject_id_is_skipped_naming_both_files(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _pulsedb(tmp_path, ("p000001", _subject("p000001", seed=1)), ("p000001_copy", _subject("p000001", seed=1)))
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        records = _read_pulsedb(root, issues)
    assert [r.patient_id for r in records] == ["mimic_p000001"]
    assert records[0].signal.size == 2 * 1250  # one copy of the two segments, not two
    assert issues.skipped == {"duplicate_subject": 1}
    folder = root / "Segment_Files" / "PulseDB_MIMIC"
    assert f"{folder / 'p000001_copy.mat'}: SubjectID of patient 'mimic_p000001' was already read from " \
           f"{folder / 'p000001.mat'}" in caplog.text


def test_char_age_is_read_as_its_text_not_its_character_code(tmp_path: Path) -> None:
    root = _pulsedb(tmp_path, ("p000001", _subject("p000001", age="8")))
    issues = DataIssues()
    (record,) = _read_pulsedb(root, issues)
    assert record.clinical["age"] == 8.0  # not 56.0, the code of '8'
    assert not issues.skipped and not issues.set_unknown


@pytest.mark.parametrize("age", [-5.0, 0.0, 120.0, 250.0])
def test_implausible_age_becomes_unknown_naming_the_file(tmp_path: Path, age: float,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    root = _pulsedb(tmp_path, ("p000001", _subject("p000001", age=age)))
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        (record,) = _read_pulsedb(root, issues)
    assert np.isnan(record.clinical["age"]) and record.signal.size == 2500  # the waveform is kept
    assert issues.set_unknown == {"age_out_of_range": 1}
    path = root / "Segment_Files" / "PulseDB_MIMIC" / "p000001.mat"
    assert f"{path}: age {age:g} is outside (0, 120) years" in caplog.text


def test_plausible_ages_at_the_edges_are_kept(tmp_path: Path) -> None:
    root = _pulsedb(tmp_path, ("p000001", _subject("p000001", age=0.5)), ("p000002", _subject("p000002", age=119.0)))
    issues = DataIssues()
    assert [r.clinical["age"] for r in _read_pulsedb(root, issues)] == [0.5, 119.0]
    assert not issues.set_unknown


def test_subject_id_outside_the_bmp_is_decoded_as_one_character(tmp_path: Path) -> None:
    root = _pulsedb(tmp_path, ("p000001", _subject("p\U0001F600x")))
    (record,) = _read_pulsedb(root, DataIssues())
    assert record.patient_id == "mimic_p\U0001F600x"


def test_unpaired_surrogate_in_a_subject_id_is_replaced_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "Segment_Files" / "PulseDB_MIMIC" / "p000001.mat"
    write_pulsedb_subject(path, _subject("pAx"))
    with h5py.File(path, "r+") as handle:  # turn 'A' (code 65) into a lone high surrogate
        for ref in handle["Subj_Wins"]["SubjectID"][()].ravel():
            handle[ref][1, 0] = 0xD83D
    (record,) = _read_pulsedb(tmp_path, DataIssues())
    assert record.patient_id == "mimic_p\ufffdx"
    pd.DataFrame({"patient_id": [record.patient_id]}).to_parquet(tmp_path / "ok.parquet")


def test_broken_time_vector_falls_back_to_125_hz_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "Segment_Files" / "PulseDB_MIMIC" / "p000001.mat"
    write_pulsedb_subject(path, _subject("p000001", n_segments=1), fs=250.0)
    with h5py.File(path, "r+") as handle:
        for ref in handle["Subj_Wins"]["T"][()].ravel():
            handle[ref][...] = 0.0  # every sample at t = 0: no sampling rate can be read from it
    issues = DataIssues()
    (record,) = _read_pulsedb(tmp_path, issues)
    assert record.fs == 125.0
    assert issues.set_unknown == {"bad_time_vector": 1} and issues.examples["bad_time_vector"] == [str(path)]


def test_file_without_the_ppg_field_lists_the_fields_it_has(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "Segment_Files" / "PulseDB_MIMIC"
    folder.mkdir(parents=True)
    write_matlab_struct_array(folder / "p000001.mat", "Subj_Wins",
                              [{"SubjectID": "p000001", "Age": 50.0, "PPG_Filtered": np.zeros(1250)}])
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert _read_pulsedb(tmp_path, issues) == []
    assert issues.skipped == {"unreadable_file": 1}
    assert "'Subj_Wins' has no field 'PPG_Raw' (fields: Age, PPG_Filtered, SubjectID)" in caplog.text


# ---- prepare: skip, summarise, record in the manifest ------------------------------------------------------

def _prepare(tmp_path: Path, root: Path) -> tuple[RunDir, object]:
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "prepare", "--config", str(TINY), "--run-dir", str(run_dir), "--set", "data.source=pulsedb",
        "--set", f"data.pulsedb_root={root}", "--set", "data.pulsedb_folders=[PulseDB_MIMIC]"])
    return RunDir(run_dir), result


def test_prepare_skips_bad_records_and_records_the_summary_in_the_manifest(tmp_path: Path) -> None:
    good = [(f"p{i:06d}", _subject(f"p{i:06d}", age=30.0 + 10 * i, seed=3 * i)) for i in (1, 2, 3)]
    root = _pulsedb(tmp_path / "pdb", *good, ("p000001_dup", good[0][1]), ("p000009", _subject("p\U0001F600")))
    slow = tmp_path / "pdb" / "Segment_Files" / "PulseDB_MIMIC" / "p000005.mat"
    write_pulsedb_subject(slow, _subject("p000005", seed=7), fs=20.0)  # band_high 12 Hz >= fs/2
    run_dir, result = _prepare(tmp_path, root)
    assert result.exit_code == 0, result.output
    meta = pd.read_parquet(run_dir.meta)
    assert sorted(meta["patient_id"].unique()) == [
        "mimic_p000001", "mimic_p000002", "mimic_p000003", "mimic_p\U0001F600"]
    assert meta.groupby("patient_id").size().eq(2).all()  # the duplicate file added no windows
    issues = json.loads(run_dir.manifest.read_text())["prepare"]["data_issues"]
    assert issues["skipped"] == {"duplicate_subject": 1, "sampling_rate_too_low": 1}
    assert issues["examples"]["sampling_rate_too_low"] == [str(slow)]
    log_text = (run_dir.root / "run.log").read_text()
    assert f"{slow}: data.windowing.band_high_hz=12.0 Hz must be below fs/2 = 10.0 Hz" in log_text
    summary = [line for line in log_text.splitlines() if "data issues:" in line]
    assert len(summary) == 1 and "WARNING" in summary[0]
    assert "duplicate_subject: 1" in summary[0] and "sampling_rate_too_low: 1" in summary[0]


def test_prepare_of_a_clean_source_records_no_issues(tmp_path: Path) -> None:
    good = [(f"p{i:06d}", _subject(f"p{i:06d}", age=30.0 + 10 * i, seed=3 * i)) for i in (1, 2, 3)]
    run_dir, result = _prepare(tmp_path, _pulsedb(tmp_path / "pdb", *good))
    assert result.exit_code == 0, result.output
    issues = json.loads(run_dir.manifest.read_text())["prepare"]["data_issues"]
    assert issues == {"skipped": {}, "set_unknown": {}, "examples": {}}
    assert "data issues:" not in (run_dir.root / "run.log").read_text()


# ---- MIMIC WFDB ------------------------------------------------------------------------------------------

def _record(root: Path, subject: int, n_segments: int = 2) -> Path:
    pieces = [(f"{s:04d}", [Channel("PLETH", known_digital(s, 1500))]) for s in range(1, n_segments + 1)]
    return write_multisegment_record(mimic_iii_record_dir(root, subject), mimic_iii_record_name(subject, START),
                                     125.0, pieces, START)


def _set_rate(header: Path, rate: str) -> None:
    """Replace the sampling frequency field of a WFDB header's record line."""
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    fields[2] = rate
    header.write_text("\n".join([" ".join(fields), *lines[1:]]) + "\n")


def _runs(header: Path, issues: DataIssues) -> list:
    return list(iter_record_runs(header, CHANNELS, 3600.0, "mimic_iii", "p000010", issues))


@pytest.mark.parametrize("rate", ["-125", "0", "250"])
def test_segment_rate_that_disagrees_with_the_master_is_skipped_naming_the_segment(
        tmp_path: Path, rate: str, caplog: pytest.LogCaptureFixture) -> None:
    header = _record(tmp_path, 10)
    segment = header.parent / f"{header.stem}_0002.hea"
    _set_rate(segment, rate)  # wfdb reads "-125" as 250 Hz: only the cross-check can catch it
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        runs = _runs(header, issues)
    assert [r.signal.size for r in runs] == [1500] and runs[0].fs == 125.0  # segment 1 only
    assert issues.skipped == {"sampling_rate_mismatch": 1}
    assert f"{segment}: sampling rate" in caplog.text and "differs from the master header's 125 Hz" in caplog.text


def test_master_header_with_zero_rate_skips_the_record_naming_it(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    header = _record(tmp_path, 10)
    _set_rate(header, "0")
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert _runs(header, issues) == []
    assert issues.skipped == {"bad_sampling_rate": 1}
    assert f"{header}: sampling rate 0 is not positive" in caplog.text


def test_partial_download_warns_once_and_counts_every_missing_segment(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    header = _record(tmp_path, 10, n_segments=5)
    for s in (2, 3, 4):
        (header.parent / f"{header.stem}_{s:04d}.hea").unlink()
    issues = DataIssues()
    with caplog.at_level(logging.INFO, logger="stsae"):
        runs = _runs(header, issues)
        issues.log_summary()
    assert [r.signal.size for r in runs] == [1500, 1500]  # segments 1 and 5, separate runs
    assert issues.skipped == {"missing_segment": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # the first missing segment, then the one summary
    assert "missing_segment" in warnings[0] and "_0002" in warnings[0]
    assert warnings[1].startswith("data issues: 3 skipped") and "missing_segment: 3" in warnings[1]
    assert sum("_0003" in m or "_0004" in m for m in caplog.messages) == 2  # the rest are still in the log


def test_record_without_ppg_lists_the_channels_it_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    header = write_multisegment_record(
        mimic_iii_record_dir(tmp_path, 10), mimic_iii_record_name(10, START), 125.0,
        [("0001", [Channel("II", known_digital(1, 1500)), Channel("ABP", known_digital(2, 1500))])], START)
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        assert _runs(header, issues) == []
    assert issues.skipped == {"no_ppg_channel": 1}
    assert f"{header}: no PPG channel (PLETH/Pleth) in any segment; channels seen: II, ABP" in caplog.text


# ---- MIMIC clinical CSVs ---------------------------------------------------------------------------------

def _clinical(directory: Path, patients: list[dict]) -> Path:
    admissions = [{"subject_id": p["subject_id"], "hadm_id": 100 + i, "admittime": "2150-01-01 00:00:00",
                   "dischtime": "2150-01-05 00:00:00"} for i, p in enumerate(patients)]
    return write_mimic_iii_clinical(directory, patients, admissions, [])


def test_patients_csv_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    directory = write_mimic_iv_clinical(
        tmp_path, [{"subject_id": 10, "gender": "F", "anchor_age": 60, "anchor_year": 2150}],
        [{"subject_id": 10, "hadm_id": 100, "admittime": "2150-01-01 00:00:00",
          "dischtime": "2150-01-05 00:00:00"}], [])
    patients = directory / "patients.csv.gz"
    text = gzip.decompress(patients.read_bytes())
    assert text.startswith(b"subject_id,")  # the BOM lands on the column the loader filters by
    patients.write_bytes(gzip.compress(b"\xef\xbb\xbf" + text))
    facts = load_mimic_iv_clinical(directory, [10]).lookup(10, START)
    assert facts is not None and facts[0]["sex"] == "F" and facts[0]["age"] == pytest.approx(60.0, abs=0.01)


def test_conflicting_patient_rows_make_that_subject_unknown_naming_the_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = _clinical(tmp_path, [
        {"subject_id": 10, "gender": "F", "dob": "2090-01-01 00:00:00"},
        {"subject_id": 10, "gender": "M", "dob": "2060-01-01 00:00:00"},  # which one is right? neither wins
        {"subject_id": 11, "gender": "M", "dob": "2080-01-01 00:00:00"},
        {"subject_id": 11, "gender": "M", "dob": "2080-01-01 00:00:00"},  # an exact repeat is harmless
    ])
    issues = DataIssues()
    with caplog.at_level(logging.WARNING, logger="stsae"):
        tables = load_mimic_iii_clinical(directory, [10, 11], issues)
    assert tables.lookup(10, START) is None
    facts = tables.lookup(11, START)
    assert facts is not None and facts[0]["sex"] == "M"
    assert issues.set_unknown == {"conflicting_clinical_rows": 1}
    assert f"{directory / 'PATIENTS.csv'}: subject_id 10 has conflicting rows" in caplog.text


def test_implausible_clinical_age_becomes_unknown_naming_the_recording(tmp_path: Path) -> None:
    header = _record(tmp_path / "wave", 10, n_segments=1)
    directory = _clinical(tmp_path / "clin", [{"subject_id": 10, "gender": "F", "dob": "2160-01-01 00:00:00"}])
    issues = DataIssues()
    tables = load_mimic_iii_clinical(directory, [10], issues)
    (record,) = iter_mimic_records(tmp_path / "wave", "mimic_iii", clinical=tables, issues=issues)
    assert np.isnan(record.clinical["age"]) and record.clinical["sex"] == "F"  # born after the recording
    assert issues.set_unknown == {"age_out_of_range": 1}
    assert issues.examples["age_out_of_range"] == [str(header)]


# ---- encoder weights -------------------------------------------------------------------------------------

def test_encoder_weights_with_nan_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    state = PaPaGeiS().state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[:2] = float("nan")
    path = tmp_path / "papagei_s.pt"
    torch.save(state, path)
    with pytest.raises(StsaeError) as err:
        load_papagei_s(path)
    assert str(err.value) == (f"{path}: tensor '{key}' has 2 NaN/inf values of {state[key].numel()}; refusing "
                              "weights that would make every embedding NaN")

