"""Record-level problems of real sources: a bad record is skipped, a bad field set unknown, never the cohort.

Why a collector instead of plain warnings: a partial MIMIC download can miss thousands of segments, and one
WARNING each buries everything else. Every problem is logged once naming its file, the first of each reason
at WARNING and the rest at INFO (the complete list lands in run.log); `log_summary` prints one WARNING per
run with the counts by reason and the first files of each; the prepare stage also records `summary()` in
manifest.json.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

AGE_MIN_YEARS = 0.0
AGE_MAX_YEARS = 120.0
_EXAMPLES_PER_REASON = 3


@dataclass
class DataIssues:
    """Counts of skipped records/files and of values set unknown, by reason, with example files."""

    skipped: Counter[str] = field(default_factory=Counter)
    set_unknown: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: Path | str, detail: str) -> None:
        """Record that the record, segment or file `where` was left out; detail: one line naming it."""
        self.skipped[reason] += 1
        self._example(reason, where)
        self._log(self.skipped[reason], "skipped: %s [%s]", detail, reason)

    def unknown(self, reason: str, where: Path | str, detail: str) -> None:
        """Record that one value read from `where` was implausible and is now unknown, or replaced by the
        source's documented default (the record is kept)."""
        self.set_unknown[reason] += 1
        self._example(reason, where)
        self._log(self.set_unknown[reason], "set unknown: %s [%s]", detail, reason)

    @staticmethod
    def _log(nth: int, message: str, detail: str, reason: str) -> None:
        log.log(logging.WARNING if nth == 1 else logging.INFO, message, detail, reason)

    def _example(self, reason: str, where: Path | str) -> None:
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON and str(where) not in shown:
            shown.append(str(where))

    def summary(self) -> dict[str, object]:
        """JSON-ready {"skipped": {reason: n}, "set_unknown": {reason: n}, "examples": {reason: [files]}}."""
        return {"skipped": dict(sorted(self.skipped.items())),
                "set_unknown": dict(sorted(self.set_unknown.items())),
                "examples": {k: list(v) for k, v in sorted(self.examples.items())}}

    def log_summary(self) -> None:
        """One WARNING line for the whole run (nothing when every record was clean)."""
        if not self.skipped and not self.set_unknown:
            return
        parts = [f"{reason}: {n} (e.g. {self.examples[reason][0]})"
                 for reason, n in sorted((self.skipped + self.set_unknown).items())]
        log.warning("data issues: %d skipped, %d values set unknown; %s (each one is in run.log)",
                    self.skipped.total(), self.set_unknown.total(), "; ".join(parts))


def checked_age(age: float, where: Path | str, issues: DataIssues) -> float:
    """age if it is unknown (NaN) or plausible (0 < age < 120 years), else NaN with the issue recorded.

    Why: a negative or 250-year age is a unit or typing error in the source; kept, it would bias the
    age model and Δage of every patient, so it is treated as unknown and named.
    """
    if math.isnan(age) or AGE_MIN_YEARS < age < AGE_MAX_YEARS:
        return age
    issues.unknown("age_out_of_range", where,
                   f"{where}: age {age:g} is outside ({AGE_MIN_YEARS:g}, {AGE_MAX_YEARS:g}) years")
    return float("nan")
