"""Clinical linkage for MIMIC waveforms: age, sex, hypertension and type-2 diabetes per recording.

MIMIC-III (`PATIENTS`, `ADMISSIONS`, `DIAGNOSES_ICD`, upper-case columns) and MIMIC-IV hosp
(`patients`, `admissions`, `diagnoses_icd`, lower-case columns), as `.csv` or `.csv.gz`. The tables are
multi-GB, so they are streamed with pyarrow in blocks, projected to the needed columns and filtered to
the subjects that have waveforms; only those rows are ever held in memory.

Rules (why each one):
- Admission: the stay whose [admit − 1 day, discharge + 1 day] contains the recording start (waveforms
  often begin in the ED, before the admit time); the closest such stay wins.
- Age: MIMIC-III from DOB at the matched admit time (else at the recording time); MIMIC-IV from
  `anchor_age` + years since 1 Jan of `anchor_year` (error < 1 year). Ages above 89 are de-identified
  (MIMIC-III shifts DOB so they read ≈300; MIMIC-IV reports 91), so every age > 89 is capped to 90 and
  flagged `extra["age_capped"] = True`.
- Labels come from the matched admission's diagnoses (what was coded for that stay); a recording that
  matches no admission takes the union over all of the subject's admissions. No diagnosis rows: None.
- HTN: ICD-9 401–405, ICD-10 I10–I13, I15, I16. T2D: ICD-9 250.x0 / 250.x2 (fifth digit 0/2 = type II
  or unspecified; 1/3 are type I, so excluded), ICD-10 E11. Secondary (249, E08/E09/E13) and
  gestational diabetes are not T2D.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stsae.data.issues import DataIssues
from stsae.errors import InputDataError

log = logging.getLogger(__name__)

AGE_CAP_YEARS = 90.0
DEIDENTIFIED_ABOVE_YEARS = 89.0
_SECONDS_PER_YEAR = 365.2425 * 86400.0
_ADMISSION_SLACK = np.timedelta64(1, "D")
_HTN_ICD9 = ("401", "402", "403", "404", "405")
_HTN_ICD10 = ("I10", "I11", "I12", "I13", "I15", "I16")
_BLOCK_BYTES = 1 << 24


def is_hypertension(code: str, icd_version: int) -> bool:
    """True for essential/secondary hypertension and hypertensive heart/kidney disease codes."""
    code = code.replace(".", "").strip().upper()
    if icd_version == 9:
        return code.startswith(_HTN_ICD9)
    return icd_version == 10 and code.startswith(_HTN_ICD10)


def is_type2_diabetes(code: str, icd_version: int) -> bool:
    """True for type-2 (or unspecified-type) diabetes; type-1 ICD-9 codes (250.x1, 250.x3) are False."""
    code = code.replace(".", "").strip().upper()
    if icd_version == 9:
        return code.startswith("250") and len(code) == 5 and code[4] in "02"
    return icd_version == 10 and code.startswith("E11")


@dataclass(frozen=True)
class Admission:
    hadm_id: int
    admit: np.datetime64
    discharge: np.datetime64


@dataclass
class ClinicalTables:
    """The clinical facts of the waveform subjects, ready for per-recording lookups.

    age_reference: subject → (time, age in years at that time); MIMIC-III uses (DOB, 0).
    labels: hadm_id → (htn, t2d) for every admission with at least one diagnosis row.
    """

    source: str
    sex: dict[int, str | None] = field(default_factory=dict)
    age_reference: dict[int, tuple[np.datetime64, float]] = field(default_factory=dict)
    admissions: dict[int, list[Admission]] = field(default_factory=dict)
    labels: dict[int, tuple[int, int]] = field(default_factory=dict)

    def lookup(
        self, subject_id: int, when: datetime | None
    ) -> tuple[dict[str, object], dict[str, object]] | None:
        """(clinical {age, sex, htn, t2d}, extra {age_capped}) of one recording, or None if unknown.

        when: the recording's start (naive datetime in MIMIC's shifted calendar), or None.
        """
        if subject_id not in self.sex:
            return None
        stays = self.admissions.get(subject_id, [])
        moment = np.datetime64(when, "s") if when is not None else None
        stay = _matching_admission(stays, moment) if moment is not None else None
        at = stay.admit if stay is not None and self.source == "mimic_iii" else moment
        if at is None and stays:
            at = min(s.admit for s in stays)
        age, capped = self._age(subject_id, at)
        chosen = [stay] if stay is not None else stays
        known = [self.labels[s.hadm_id] for s in chosen if s.hadm_id in self.labels]
        htn = max(k[0] for k in known) if known else None
        t2d = max(k[1] for k in known) if known else None
        clinical = {"age": age, "sex": self.sex[subject_id], "htn": htn, "t2d": t2d}
        return clinical, {"age_capped": capped}

    def _age(self, subject_id: int, at: np.datetime64 | None) -> tuple[float, bool]:
        reference = self.age_reference.get(subject_id)
        if reference is None or at is None:
            return float("nan"), False
        when, age_then = reference
        age = age_then + float((at - when) / np.timedelta64(1, "s")) / _SECONDS_PER_YEAR
        if age > DEIDENTIFIED_ABOVE_YEARS:
            return AGE_CAP_YEARS, True
        return age, False


def _matching_admission(stays: list[Admission], moment: np.datetime64) -> Admission | None:
    best: tuple[np.timedelta64, Admission] | None = None
    for stay in stays:
        if stay.admit - _ADMISSION_SLACK <= moment <= stay.discharge + _ADMISSION_SLACK:
            distance = abs(moment - stay.admit)
            if best is None or distance < best[0]:
                best = (distance, stay)
    return best[1] if best is not None else None


def _find_table(directory: Path, name: str, config_key: str) -> Path:
    for stem in (name, name.upper(), name.lower()):
        for suffix in (".csv", ".csv.gz"):
            path = directory / f"{stem}{suffix}"
            if path.is_file():
                return path
    raise InputDataError(f"{config_key}: {directory} has no {name}.csv or {name}.csv.gz")


def _header(path: Path) -> dict[str, str]:
    """Lower-case column name → column name as spelt in the file (MIMIC-III upper, MIMIC-IV lower)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:  # utf-8-sig: a byte-order mark (Excel's CSV export writes one) must not become part of a name
        with opener(path, "rt", encoding="utf-8-sig") as handle:
            first = handle.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{path}: not a readable CSV ({exc})") from None
    return {name.strip().strip('"').lower(): name.strip().strip('"') for name in first.strip().split(",")}


def read_filtered_csv(
    path: Path, columns: dict[str, pa.DataType], subject_ids: Iterable[int]
) -> pd.DataFrame:
    """Stream a CSV in blocks, keep `columns` (lower-case names → type) and rows of `subject_ids`.

    Returns a DataFrame with lower-case column names. Raises InputDataError naming the file and the
    missing column when the header lacks one.
    """
    spelt = _header(path)
    missing = [name for name in columns if name not in spelt]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {missing}")
    wanted = pa.array(sorted(set(subject_ids)), type=pa.int64())
    convert = pacsv.ConvertOptions(
        include_columns=[spelt[name] for name in columns],
        column_types={spelt[name]: kind for name, kind in columns.items()},
        timestamp_parsers=["%Y-%m-%d %H:%M:%S", "%Y-%m-%d"],
    )
    subject_column = spelt["subject_id"]
    parts: list[pa.RecordBatch] = []
    try:
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
                                convert_options=convert)
        for batch in reader:
            keep = pc.is_in(batch.column(subject_column), value_set=wanted)
            parts.append(batch.filter(keep))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputDataError(f"{path}: cannot parse ({str(exc).splitlines()[0]})") from None
    table = pa.Table.from_batches(parts, schema=reader.schema)
    frame = table.to_pandas(timestamp_as_object=False, date_as_object=False)
    return frame.rename(columns={spelt[name]: name for name in columns})


def unique_patients(frame: pd.DataFrame, path: Path, issues: DataIssues, key: str = "subject_id") -> pd.DataFrame:
    """One row per `key` value: exact duplicate rows collapse; a patient whose rows disagree is dropped.

    Why not "first wins": which of two conflicting rows comes first is an accident of the export, so
    either value could be wrong; the subject's age and sex become unknown and the file is named.
    """
    frame = frame.drop_duplicates()
    conflicting = frame[key].duplicated(keep=False)
    for subject in frame.loc[conflicting, key].unique():
        issues.unknown("conflicting_clinical_rows", path,
                       f"{path}: {key} {subject} has conflicting rows; its clinical values are unknown")
    return frame.loc[~conflicting]


def _admissions(frame: pd.DataFrame) -> dict[int, list[Admission]]:
    stays: dict[int, list[Admission]] = {}
    admit = frame["admittime"].to_numpy(dtype="datetime64[s]")
    discharge = frame["dischtime"].to_numpy(dtype="datetime64[s]")
    rows = zip(frame["subject_id"], frame["hadm_id"], admit, discharge, strict=True)
    for subject, hadm, start, end in rows:
        if np.isnat(start):
            continue
        stays.setdefault(int(subject), []).append(
            Admission(int(hadm), start, start if np.isnat(end) else end)
        )
    return stays


def _labels(frame: pd.DataFrame, code_column: str, versions: np.ndarray) -> dict[int, tuple[int, int]]:
    codes = frame[code_column].fillna("").astype(str).to_numpy()
    htn = np.array([is_hypertension(c, int(v)) for c, v in zip(codes, versions, strict=True)], dtype=bool)
    t2d = np.array([is_type2_diabetes(c, int(v)) for c, v in zip(codes, versions, strict=True)], dtype=bool)
    flags = pd.DataFrame({"hadm_id": frame["hadm_id"].to_numpy(), "htn": htn, "t2d": t2d})
    grouped = flags.dropna(subset=["hadm_id"]).groupby("hadm_id")[["htn", "t2d"]].any()
    return {int(h): (int(row.htn), int(row.t2d)) for h, row in grouped.iterrows()}


def _sex(values: pd.Series) -> dict[int, str | None]:
    """gender column ("M"/"F", any case) → "M"/"F"/None per subject."""
    letters = {int(s): g.strip().upper()[:1] if isinstance(g, str) else "" for s, g in values.items()}
    return {s: g if g in ("M", "F") else None for s, g in letters.items()}


def _dob_reference(patients: pd.DataFrame) -> dict[int, tuple[np.datetime64, float]]:
    """MIMIC-III: age 0 at the date of birth."""
    births = patients["dob"].to_numpy(dtype="datetime64[s]")
    return {int(s): (np.datetime64(d, "s"), 0.0)
            for s, d in zip(patients["subject_id"], births, strict=True) if not np.isnat(d)}


def _anchor_reference(patients: pd.DataFrame) -> dict[int, tuple[np.datetime64, float]]:
    """MIMIC-IV: anchor_age on 1 January of anchor_year."""
    rows = zip(patients["subject_id"], patients["anchor_age"], patients["anchor_year"], strict=True)
    return {int(s): (np.datetime64(f"{int(y):04d}-01-01T00:00:00", "s"), float(a))
            for s, a, y in rows if np.isfinite(a)}


@dataclass(frozen=True)
class _MimicSchema:
    """What differs between MIMIC-III and MIMIC-IV clinical tables; everything else is shared."""

    tables: tuple[str, str, str]  # patients, admissions, diagnoses file stems
    patient_columns: dict[str, pa.DataType]
    diagnosis_columns: dict[str, pa.DataType]
    code_column: str
    age_reference: Callable[[pd.DataFrame], dict[int, tuple[np.datetime64, float]]]


_ADMISSION_COLUMNS = {"subject_id": pa.int64(), "hadm_id": pa.int64(), "admittime": pa.timestamp("s"),
                      "dischtime": pa.timestamp("s")}
MIMIC_SCHEMAS = {
    "mimic_iii": _MimicSchema(
        ("PATIENTS", "ADMISSIONS", "DIAGNOSES_ICD"),
        {"subject_id": pa.int64(), "gender": pa.string(), "dob": pa.timestamp("s")},
        {"subject_id": pa.int64(), "hadm_id": pa.int64(), "icd9_code": pa.string()},
        "icd9_code", _dob_reference),
    "mimic_iv": _MimicSchema(
        ("patients", "admissions", "diagnoses_icd"),
        {"subject_id": pa.int64(), "gender": pa.string(), "anchor_age": pa.float64(), "anchor_year": pa.int64()},
        {"subject_id": pa.int64(), "hadm_id": pa.int64(), "icd_code": pa.string(), "icd_version": pa.int64()},
        "icd_code", _anchor_reference),
}


def load_mimic_clinical(directory: Path, source: str, subject_ids: Iterable[int],
                        issues: DataIssues | None = None) -> ClinicalTables:
    """Read the patients / admissions / diagnoses tables of `source` (mimic_iii | mimic_iv) for
    `subject_ids` from `directory` (config key data.<source>_clinical)."""
    schema, key = MIMIC_SCHEMAS[source], f"data.{source}_clinical"
    ids = sorted(set(subject_ids))
    patients_name, admissions_name, diagnoses_name = schema.tables
    patients_path = _find_table(directory, patients_name, key)
    patients = unique_patients(read_filtered_csv(patients_path, schema.patient_columns, ids), patients_path,
                               issues if issues is not None else DataIssues())
    admissions = read_filtered_csv(_find_table(directory, admissions_name, key), _ADMISSION_COLUMNS, ids)
    diagnoses = read_filtered_csv(_find_table(directory, diagnoses_name, key), schema.diagnosis_columns, ids)
    versions = (diagnoses["icd_version"].fillna(0).to_numpy(dtype=np.int64) if "icd_version" in diagnoses
                else np.full(len(diagnoses), 9))
    tables = ClinicalTables(
        source=source,
        sex=_sex(patients.set_index("subject_id")["gender"]),
        age_reference=schema.age_reference(patients),
        admissions=_admissions(admissions),
        labels=_labels(diagnoses, schema.code_column, versions),
    )
    _log_coverage(tables, ids)
    return tables


def load_mimic_iii_clinical(directory: Path, subject_ids: Iterable[int],
                            issues: DataIssues | None = None) -> ClinicalTables:
    """PATIENTS / ADMISSIONS / DIAGNOSES_ICD for `subject_ids` (config key data.mimic_iii_clinical)."""
    return load_mimic_clinical(directory, "mimic_iii", subject_ids, issues)


def load_mimic_iv_clinical(directory: Path, subject_ids: Iterable[int],
                           issues: DataIssues | None = None) -> ClinicalTables:
    """patients / admissions / diagnoses_icd (hosp) for `subject_ids` (config key data.mimic_iv_clinical)."""
    return load_mimic_clinical(directory, "mimic_iv", subject_ids, issues)


def _log_coverage(tables: ClinicalTables, ids: list[int]) -> None:
    missing = sum(1 for s in ids if s not in tables.sex)
    log.info("%s clinical: %d of %d waveform subjects found in the patients table (%d missing); "
             "%d admissions, %d with diagnoses", tables.source, len(ids) - missing, len(ids), missing,
             sum(len(v) for v in tables.admissions.values()), len(tables.labels))
