"""The one record contract every source produces, so windowing, QC and all later stages are source-blind."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

CLINICAL_FIELDS = ("age", "sex", "htn", "t2d")


@dataclass
class RawRecord:
    """One contiguous PPG recording of one patient (a gap-free run: gaps start a new record).

    signal: float64[n] raw PPG at `fs` Hz (NaN allowed; QC will reject those windows).
    clinical: age (years, float or NaN), sex ("M"/"F"/None), htn, t2d (0/1 or None).
    extra: per-record columns copied to every window's metadata (e.g. age_capped for MIMIC-III).
    origin: the file the record was read from, so a record skipped later is named by its file.
    """

    patient_id: str
    record_id: str
    signal: np.ndarray
    fs: float
    source: str
    t_start_s: float = 0.0
    clinical: dict[str, object] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)
    origin: str = ""

    def __post_init__(self) -> None:
        if self.signal.ndim != 1:
            raise ValueError(f"record {self.record_id}: signal must be 1-D, got shape {self.signal.shape}")
        if not self.fs > 0:
            raise ValueError(f"record {self.record_id}: sampling rate must be > 0, got {self.fs}")


def split_long(record: RawRecord, max_record_s: float) -> list[RawRecord]:
    """`record` cut into consecutive pieces of at most max_record_s (ids `<record_id>#part<k>` when cut), so a
    day-long recording never has to be windowed in one piece; windows never span two pieces."""
    limit = max(1, int(max_record_s * record.fs))
    if record.signal.size <= limit:
        return [record]
    return [replace(record, record_id=f"{record.record_id}#part{k}", signal=record.signal[start:start + limit],
                    t_start_s=record.t_start_s + start / record.fs)
            for k, start in enumerate(range(0, record.signal.size, limit))]
