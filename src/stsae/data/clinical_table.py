"""Your own clinical table (data.clinical_path): age, sex, HTN, T2D and extra phenotypes per patient_id.

Joins to every generic source (table, wfdb, npz) by patient_id. The file is CSV or Parquet with one row per
patient: `patient_id` (required), `age` (years), `sex` (M/F, male/female, any case), `htn`, `t2d` (0/1,
true/false, yes/no) and any further column whose values are all 0/1 (a phenotype, copied to every window's
metadata under its own name). A non-binary extra column, or one named like a meta.parquet column (`split`,
`source`, …), is ignored with a warning naming it. Checks as for the MIMIC tables: an age outside
(0, 120) years and a 0/1 label that is neither become unknown, and a patient whose rows disagree loses all
its values, each recorded in DataIssues naming the file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from stsae.data.clinical import unique_patients
from stsae.data.issues import DataIssues, checked_age
from stsae.errors import InputDataError

log = logging.getLogger(__name__)

KEY = "patient_id"
_STANDARD = ("age", "sex", "htn", "t2d")
# meta.parquet columns a phenotype must not overwrite
_RESERVED = frozenset({"window_id", "record_id", "segment_idx", "t_start_s", "fs_orig", "source", "split",
                       "age_capped"})
_TRUE = {"1", "1.0", "true", "yes", "y"}
_FALSE = {"0", "0.0", "false", "no", "n"}


def read_table(path: Path, config_key: str) -> pd.DataFrame:
    """A whole CSV or Parquet file as a DataFrame (by suffix), or InputDataError naming key and file."""
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype={KEY: str})
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{config_key}: {path} is not a readable CSV/Parquet "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _binary(value: object) -> float:
    """0/1 of a label cell, NaN for missing; ValueError for anything else."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return float("nan")
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    if text in ("", "nan", "none", "na"):
        return float("nan")
    raise ValueError(text)


def _is_binary_column(values: pd.Series) -> bool:
    try:
        [_binary(v) for v in values]
    except ValueError:
        return False
    return True


def _sex(value: object) -> str | None:
    letter = str(value).strip().upper()[:1] if isinstance(value, str) else ""
    return letter if letter in ("M", "F") else None


@dataclass
class ClinicalTable:
    """patient_id → (clinical {age, sex, htn, t2d}, extra {phenotype: 0/1/NaN}) from data.clinical_path."""

    path: Path
    rows: dict[str, tuple[dict[str, object], dict[str, object]]] = field(default_factory=dict)
    unmatched: set[str] = field(default_factory=set)

    def lookup(self, patient_id: str) -> tuple[dict[str, object], dict[str, object]]:
        """The patient's facts, or all-unknown ones (the patient is counted for `log_coverage`)."""
        if patient_id in self.rows:
            clinical, extra = self.rows[patient_id]
            return dict(clinical), dict(extra)
        self.unmatched.add(patient_id)
        return {"age": float("nan"), "sex": None, "htn": None, "t2d": None}, {}

    def log_coverage(self) -> None:
        if self.unmatched:
            log.warning("%s: %d patient(s) with PPG have no row (clinical values unknown), e.g. %s", self.path,
                        len(self.unmatched), ", ".join(sorted(self.unmatched)[:3]))


def _patient_facts(row: pd.Series, phenotypes: list[str], path: Path,
                   issues: DataIssues) -> tuple[dict[str, object], dict[str, object]]:
    where = f"{path} ({KEY} {row[KEY]})"
    age = pd.to_numeric(pd.Series([row.get("age")]), errors="coerce").iloc[0]
    clinical: dict[str, object] = {"age": checked_age(float(age), where, issues),
                                   "sex": _sex(row.get("sex"))}
    for name in ("htn", "t2d"):
        try:
            value = _binary(row.get(name))
        except ValueError as exc:
            issues.unknown("bad_binary_value", path, f"{where}: {name} = {exc} is not 0/1; set unknown")
            value = float("nan")
        clinical[name] = None if math.isnan(value) else int(value)
    return clinical, {name: _binary(row[name]) for name in phenotypes}


def load_clinical_table(path: Path, issues: DataIssues | None = None) -> ClinicalTable:
    """Read data.clinical_path (see the module docstring). Raises InputDataError when patient_id is missing."""
    issues = issues if issues is not None else DataIssues()
    frame = read_table(path, "data.clinical_path")
    if KEY not in frame.columns:
        raise InputDataError(f"data.clinical_path: {path} has no '{KEY}' column (columns: "
                             f"{', '.join(map(str, frame.columns))})")
    frame[KEY] = frame[KEY].astype(str)
    extra_columns = [c for c in frame.columns if c not in (KEY, *_STANDARD)]
    phenotypes = [c for c in extra_columns if c not in _RESERVED and _is_binary_column(frame[c])]
    for column in sorted(set(extra_columns) - set(phenotypes)):
        why = "is a meta.parquet column name" if column in _RESERVED else "is not 0/1"
        log.warning("data.clinical_path: %s column '%s' %s; ignored", path, column, why)
    frame = unique_patients(frame[[KEY, *[c for c in _STANDARD if c in frame.columns], *phenotypes]], path,
                            issues, key=KEY)
    table = ClinicalTable(path)
    for _, row in frame.iterrows():
        table.rows[row[KEY]] = _patient_facts(row, phenotypes, path, issues)
    log.info("data.clinical_path: %d patients, phenotype columns %s", len(table.rows), phenotypes or "none")
    return table

