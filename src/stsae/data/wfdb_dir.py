"""Your own PPG as a PhysioNet-style WFDB directory (data.source: wfdb).

Records are listed by the `RECORDS` file of data.wfdb_root (an entry ending in "/" is a sub-directory with
its own RECORDS, as on PhysioNet), or, without one, by walking the tree for `.hea` headers. Single- and
multi-segment records are both read; the segments (and `_layout` header) of a multi-segment record are not
records themselves. The PPG channel is the first of data.ppg_channels present (case-insensitive); the
sampling rate is the header's, integer or not (MIMIC-IV pleth: 124.945 Hz). Reading reuses the MIMIC
loader's gap-free runs (`stsae.data.mimic.iter_record_runs`): `~` gaps and channel changes end a record.

patient_id: the name of the directory holding the record (one directory per patient, as PhysioNet lays
out MIMIC), or the record name for records at the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import wfdb

from stsae.data.issues import DataIssues
from stsae.data.mimic import WFDB_ERRORS, iter_record_runs
from stsae.data.records import RawRecord

SOURCE = "wfdb"


def _listed(directory: Path) -> Iterator[Path]:
    """Header paths named by directory/RECORDS, recursing into "sub/" entries."""
    for line in (directory / "RECORDS").read_text().splitlines():
        entry = line.strip()
        if not entry:
            continue
        if entry.endswith("/"):
            sub = directory / entry
            yield from _listed(sub) if (sub / "RECORDS").is_file() else _walked(sub)
        else:
            yield directory / f"{entry}.hea"


def _walked(root: Path) -> Iterator[Path]:
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        yield from (Path(directory) / name for name in sorted(files) if name.endswith(".hea"))


def _segment_names(header_path: Path) -> set[str]:
    """Segment names of a multi-segment header (empty for a single-segment or unreadable one)."""
    try:
        header = wfdb.rdheader(str(header_path.with_suffix("")))
    except WFDB_ERRORS:
        return set()
    return set(header.seg_name) if isinstance(header, wfdb.MultiRecord) else set()


def record_headers(root: Path) -> Iterator[Path]:
    """Headers of the records under root (RECORDS if present, else a walk), segments left out.

    Segments are told apart per directory (a master and its segments share one), so only one directory's
    header names are held at a time.
    """
    candidates = _listed(root) if (root / "RECORDS").is_file() else _walked(root)
    directory: Path | None = None
    batch: list[Path] = []
    for path in candidates:
        if path.parent != directory and batch:
            yield from _records_only(batch)
            batch = []
        directory = path.parent
        batch.append(path)
    yield from _records_only(batch)


def _records_only(headers: list[Path]) -> Iterator[Path]:
    segments = set().union(*(_segment_names(h) for h in headers)) if headers else set()
    yield from (h for h in headers if h.stem not in segments and not h.stem.endswith("_layout"))


def iter_wfdb_records(root: Path, channels: Sequence[str] = ("PLETH", "Pleth"), max_record_s: float = 3600.0,
                      issues: DataIssues | None = None) -> Iterator[RawRecord]:
    """Every gap-free PPG run of every record under root, one record in memory at a time."""
    issues = issues if issues is not None else DataIssues()
    for header in record_headers(root):
        if not header.is_file():
            issues.skip("unreadable_header", header, f"{header}: listed in RECORDS but missing")
            continue
        patient = header.stem if header.parent == root else header.parent.name
        yield from iter_record_runs(header, channels, max_record_s, SOURCE, patient, issues)
