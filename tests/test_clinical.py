"""Clinical linkage (age, sex, HTN, T2D) from MIMIC-III / MIMIC-IV CSVs written in their real layouts."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from realformat_fixtures import (
    Channel,
    known_digital,
    mimic_iii_record_dir,
    mimic_iii_record_name,
    write_mimic_iii_clinical,
    write_mimic_iv_clinical,
    write_multisegment_record,
)
from stsae.data.clinical import (
    is_hypertension,
    is_type2_diabetes,
    load_mimic_iii_clinical,
    load_mimic_iv_clinical,
)
from stsae.data.clinical_table import load_clinical_table
from stsae.data.issues import DataIssues
from stsae.data.mimic import iter_mimic_records
from stsae.errors import InputDataError

RECORD_TIME = datetime(2150, 6, 10, 12, 0)


def _mimic_iii_tables(directory: Path) -> Path:
    return write_mimic_iii_clinical(
        directory,
        patients=[
            {"subject_id": 20, "gender": "F", "dob": "2090-06-10 00:00:00"},
            {"subject_id": 21, "gender": "M", "dob": "1850-01-01 00:00:00"},
            {"subject_id": 99, "gender": "M", "dob": "2100-01-01 00:00:00"},
        ],
        admissions=[
            {"subject_id": 20, "hadm_id": 100, "admittime": "2140-01-01 08:00:00",
             "dischtime": "2140-01-09 08:00:00"},
            {"subject_id": 20, "hadm_id": 101, "admittime": "2150-06-10 00:00:00",
             "dischtime": "2150-06-20 10:00:00"},
            {"subject_id": 21, "hadm_id": 200, "admittime": "2150-06-09 00:00:00",
             "dischtime": "2150-06-12 00:00:00"},
        ],
        diagnoses=[
            {"subject_id": 20, "hadm_id": 100, "code": "25001"},
            {"subject_id": 20, "hadm_id": 101, "code": "4019"},
            {"subject_id": 20, "hadm_id": 101, "code": "25002"},
            {"subject_id": 21, "hadm_id": 200, "code": "25011"},
            {"subject_id": 99, "hadm_id": 900, "code": "4019"},
        ],
    )


def test_mimic_iii_age_sex_and_labels_come_from_the_matched_admission(tmp_path: Path) -> None:
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path), [20, 21])
    clinical, extra = tables.lookup(20, RECORD_TIME)
    assert clinical["sex"] == "F" and clinical["htn"] == 1 and clinical["t2d"] == 1
    assert clinical["age"] == pytest.approx(60.0, abs=0.01)
    assert extra == {"age_capped": False}


def test_mimic_iii_age_over_89_is_capped_at_90_and_flagged(tmp_path: Path) -> None:
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path), [20, 21])
    clinical, extra = tables.lookup(21, RECORD_TIME)
    assert clinical["age"] == 90.0 and extra == {"age_capped": True}


def test_type1_diabetes_code_does_not_make_t2d(tmp_path: Path) -> None:
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path), [21])
    clinical, _ = tables.lookup(21, RECORD_TIME)
    assert (clinical["htn"], clinical["t2d"]) == (0, 0)


def test_recording_outside_any_admission_takes_union_of_all_admissions(tmp_path: Path) -> None:
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path), [20])
    clinical, _ = tables.lookup(20, datetime(2145, 1, 1))
    assert (clinical["htn"], clinical["t2d"]) == (1, 1)
    assert clinical["age"] == pytest.approx(54.56, abs=0.01)


def test_rows_of_subjects_without_waveforms_are_not_loaded(tmp_path: Path) -> None:
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path), [20])
    assert set(tables.sex) == {20} and set(tables.admissions) == {20} and set(tables.labels) == {100, 101}
    assert tables.lookup(99, RECORD_TIME) is None


def test_mimic_iv_age_from_anchor_year_and_icd10_and_icd9_labels(tmp_path: Path) -> None:
    directory = write_mimic_iv_clinical(
        tmp_path,
        patients=[{"subject_id": 10014354, "gender": "M", "anchor_age": 60, "anchor_year": 2148},
                  {"subject_id": 10000002, "gender": "F", "anchor_age": 91, "anchor_year": 2150}],
        admissions=[{"subject_id": 10014354, "hadm_id": 1, "admittime": "2150-06-10 00:00:00",
                     "dischtime": "2150-06-15 00:00:00"},
                    {"subject_id": 10000002, "hadm_id": 2, "admittime": "2150-06-10 00:00:00",
                     "dischtime": "2150-06-15 00:00:00"}],
        diagnoses=[{"subject_id": 10014354, "hadm_id": 1, "code": "I110", "version": 10},
                   {"subject_id": 10014354, "hadm_id": 1, "code": "E119", "version": 10},
                   {"subject_id": 10000002, "hadm_id": 2, "code": "4011", "version": 9},
                   {"subject_id": 10000002, "hadm_id": 2, "code": "E109", "version": 10}],
    )
    tables = load_mimic_iv_clinical(directory, [10014354, 10000002])
    clinical, extra = tables.lookup(10014354, RECORD_TIME)
    assert clinical == pytest.approx({"age": 62.44, "sex": "M", "htn": 1, "t2d": 1}, abs=0.01)
    assert extra == {"age_capped": False}
    clinical, extra = tables.lookup(10000002, RECORD_TIME)
    assert (clinical["age"], clinical["htn"], clinical["t2d"], extra["age_capped"]) == (90.0, 1, 0, True)


@pytest.mark.parametrize(("code", "version", "expected"), [
    ("4019", 9, True), ("40391", 9, True), ("405.01", 9, True), ("4060", 9, False), ("3019", 9, False),
    ("I10", 10, True), ("I129", 10, True), ("I160", 10, True), ("I20", 10, False), ("4019", 10, False),
])
def test_hypertension_codes(code: str, version: int, expected: bool) -> None:
    assert is_hypertension(code, version) is expected


@pytest.mark.parametrize(("code", "version", "expected"), [
    ("25000", 9, True), ("25002", 9, True), ("25040", 9, True), ("250.62", 9, True),
    ("25001", 9, False), ("25003", 9, False), ("25093", 9, False), ("24900", 9, False),
    ("E119", 10, True), ("E1165", 10, True), ("E109", 10, False), ("E139", 10, False),
])
def test_type2_diabetes_codes_exclude_type1(code: str, version: int, expected: bool) -> None:
    assert is_type2_diabetes(code, version) is expected


def test_missing_table_raises_one_line_error_naming_the_config_key(tmp_path: Path) -> None:
    _mimic_iii_tables(tmp_path)
    (tmp_path / "ADMISSIONS.csv").unlink()
    with pytest.raises(InputDataError, match=r"^data\.mimic_iii_clinical: .* has no ADMISSIONS\.csv"):
        load_mimic_iii_clinical(tmp_path, [20])


def test_table_missing_a_column_raises_naming_file_and_column(tmp_path: Path) -> None:
    _mimic_iii_tables(tmp_path)
    (tmp_path / "PATIENTS.csv").write_text("ROW_ID,SUBJECT_ID,GENDER\n1,20,F\n")
    with pytest.raises(InputDataError, match=r"PATIENTS\.csv: missing column\(s\) \['dob'\]"):
        load_mimic_iii_clinical(tmp_path, [20])


def test_records_of_subjects_missing_from_tables_are_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    waves = tmp_path / "waves"
    for subject in (20, 55):
        write_multisegment_record(
            mimic_iii_record_dir(waves, subject), mimic_iii_record_name(subject, RECORD_TIME), 125.0,
            [("0001", [Channel("PLETH", known_digital(1, 300))])], RECORD_TIME, layout_prefix=f"{subject}00")
    tables = load_mimic_iii_clinical(_mimic_iii_tables(tmp_path / "clinical"), [20, 55])
    with caplog.at_level(logging.INFO, logger="stsae"):
        records = list(iter_mimic_records(waves, "mimic_iii", clinical=tables))
    assert records[0].clinical["sex"] == "F" and records[0].extra == {"age_capped": False}
    assert np.isnan(records[1].clinical["age"]) and records[1].clinical["htn"] is None
    assert records[1].extra == {"age_capped": False}
    assert "1 of 2 records had no clinical match" in caplog.text


def test_own_clinical_table_conflicting_rows_make_the_patient_unknown(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["a", "a", "b", "b"], "age": [50, 50, 60, 61], "sex": ["F", "F", "M", "M"]}
                 ).to_csv(tmp_path / "c.csv", index=False)
    issues = DataIssues()
    table = load_clinical_table(tmp_path / "c.csv", issues)
    assert table.lookup("a")[0] == {"age": 50.0, "sex": "F", "htn": None, "t2d": None}
    assert np.isnan(table.lookup("b")[0]["age"]) and table.lookup("b")[0]["sex"] is None
    assert issues.set_unknown == {"conflicting_clinical_rows": 1}
    assert table.unmatched == {"b"}  # b has no usable row, so it counts as not found


def test_own_clinical_table_parquet_with_boolean_phenotype(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["7"], "age": [70.0], "sex": ["male"], "htn": [True], "t2d": [False],
                  "ckd": [True]}).to_parquet(tmp_path / "c.parquet")
    clinical, extra = load_clinical_table(tmp_path / "c.parquet").lookup("7")
    assert clinical == {"age": 70.0, "sex": "M", "htn": 1, "t2d": 0} and extra == {"ckd": 1.0}
