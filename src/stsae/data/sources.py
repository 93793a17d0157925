"""One entry point for real-data sources: check the configured paths, then stream RawRecords.

`iter_source_records(data_cfg)` dispatches on `data.source` (pulsedb | mimic_iii | mimic_iv, or your own
PPG: table | wfdb | npz, joined to data.clinical_path by patient_id) so the prepare stage never needs to
know which loader runs. Path problems are caught before any reading
starts, each as one line naming the config key and the path.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

from stsae.config import DataSection
from stsae.data.clinical import ClinicalTables, load_mimic_clinical
from stsae.data.clinical_table import ClinicalTable, load_clinical_table
from stsae.data.issues import DataIssues
from stsae.data.mimic import iter_mimic_records, subject_ids
from stsae.data.npz import iter_npz_records
from stsae.data.pulsedb import iter_pulsedb_records
from stsae.data.records import RawRecord
from stsae.data.table import TableOptions, iter_table_records
from stsae.data.wfdb_dir import iter_wfdb_records
from stsae.errors import StsaeError

log = logging.getLogger(__name__)

GENERIC_SOURCES = ("table", "wfdb", "npz")
REAL_SOURCES = ("pulsedb", "mimic_iii", "mimic_iv", *GENERIC_SOURCES)


def check_directory(key: str, path: Path | None) -> Path:
    """Return `path` if it is a non-empty directory, else raise StsaeError naming config key and path."""
    if path is None:
        raise StsaeError(f"{key}: not set (point it at the downloaded data; see DATA_GUIDE.md)")
    path = Path(path).expanduser()
    if not path.exists():
        raise StsaeError(f"{key}: {path} does not exist")
    if not path.is_dir():
        raise StsaeError(f"{key}: {path} is not a directory")
    if next(path.iterdir(), None) is None:
        raise StsaeError(f"{key}: {path} is empty")
    return path


def check_file(key: str, path: Path) -> Path:
    """Return `path` if it is an existing file, else raise StsaeError naming config key and path."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise StsaeError(f"{key}: {path} does not exist")
    return path


def _clinical(data_cfg: DataSection, root: Path, issues: DataIssues) -> ClinicalTables | None:
    key = f"data.{data_cfg.source}_clinical"
    directory = getattr(data_cfg, f"{data_cfg.source}_clinical")
    if directory is None:
        log.warning("%s not set: records carry no age, sex, HTN or T2D", key)
        return None
    directory = check_directory(key, directory)
    return load_mimic_clinical(directory, data_cfg.source, subject_ids(root, data_cfg.source), issues)


def _generic_records(data_cfg: DataSection, issues: DataIssues) -> Iterator[RawRecord]:
    if data_cfg.source == "table":
        options = TableOptions(data_cfg.table_time_column, data_cfg.table_time_unit, data_cfg.table_chunk_rows,
                               data_cfg.max_gap_s, data_cfg.max_record_s)
        return iter_table_records(check_file("data.table_path", _required("data.table_path",
                                                                          data_cfg.table_path)), options, issues)
    if data_cfg.source == "npz":
        path = check_file("data.npz_path", _required("data.npz_path", data_cfg.npz_path))
        return iter_npz_records(path, data_cfg.npz_allow_pickle, data_cfg.max_record_s, issues)
    root = check_directory("data.wfdb_root", data_cfg.wfdb_root)
    return iter_wfdb_records(root, data_cfg.ppg_channels, data_cfg.max_record_s, issues)


def _required(key: str, path: Path | None) -> Path:
    if path is None:
        raise StsaeError(f"{key}: not set (point it at your file; see DATA_GUIDE.md, 'Your own PPG')")
    return path


def _joined(records: Iterator[RawRecord], table: ClinicalTable | None) -> Iterator[RawRecord]:
    """Records with age/sex/htn/t2d and the phenotype columns of data.clinical_path (unknown if absent)."""
    for record in records:
        if table is not None:
            record.clinical, extra = table.lookup(record.patient_id)
            record.extra.update(extra)
        yield record
    if table is not None:
        table.log_coverage()


def _records(data_cfg: DataSection, issues: DataIssues) -> Iterator[RawRecord]:
    if data_cfg.source in GENERIC_SOURCES:
        table = None
        if data_cfg.clinical_path is None:
            log.warning("data.clinical_path not set: records carry no age, sex, HTN or T2D")
        else:
            table = load_clinical_table(check_file("data.clinical_path", data_cfg.clinical_path), issues)
        return _joined(_generic_records(data_cfg, issues), table)
    if data_cfg.source == "pulsedb":
        root = check_directory("data.pulsedb_root", data_cfg.pulsedb_root)
        info = data_cfg.pulsedb_subset_info
        return iter_pulsedb_records(
            root,
            signal_field=data_cfg.pulsedb_signal,
            folders=data_cfg.pulsedb_folders,
            subset_info=check_file("data.pulsedb_subset_info", info) if info is not None else None,
            issues=issues,
        )
    root_key = f"data.{data_cfg.source}_root"
    root = check_directory(root_key, getattr(data_cfg, f"{data_cfg.source}_root"))
    return iter_mimic_records(
        root,
        data_cfg.source,
        channels=data_cfg.ppg_channels,
        max_record_s=data_cfg.max_record_s,
        clinical=_clinical(data_cfg, root, issues),
        issues=issues,
    )


def iter_source_records(data_cfg: DataSection, issues: DataIssues | None = None) -> Iterator[RawRecord]:
    """Stream the configured real source's records (at most data.max_records of them).

    Raises StsaeError at once (before the first record is read) when data.source is not a real source
    or a configured path is missing or empty. A bad record or file is skipped, never the cohort: the
    reason goes to `issues` (the caller logs and records its summary).
    """
    issues = issues if issues is not None else DataIssues()
    if data_cfg.source not in REAL_SOURCES:
        choices = ", ".join(REAL_SOURCES)
        raise StsaeError(f"data.source: '{data_cfg.source}' is not a real-data source ({choices})")
    records = _records(data_cfg, issues)
    return itertools.islice(records, data_cfg.max_records) if data_cfg.max_records else records
