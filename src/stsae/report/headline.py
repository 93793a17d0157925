"""The headline numbers of a run: what `stsae run` prints last and what tops report.html.

Both places read the same `Headline`, so the terminal and the report can never disagree. Every number
is optional: a missing file shows as "not available" instead of hiding the rest of the summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stsae.report.scorecard import (
    finite,
    leaderboard_rows,
    main_row,
    pass_count,
    read_optional_json,
    scorecard,
)
from stsae.rundir import RunDir

RANDOM_SHA256 = "RANDOM"
RANDOM_WARNING = "RANDOM ENCODER WEIGHTS — not PaPaGei"
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class OddsRatio:
    """Odds ratio per 5 years of Δage with its 95% CI, or the reason it was skipped."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    skipped: str = ""

    def text(self) -> str:
        if self.value is None or self.ci_low is None or self.ci_high is None:
            return f"skipped ({self.skipped})" if self.skipped else NOT_AVAILABLE
        return f"{self.value:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"


@dataclass(frozen=True)
class Headline:
    encoder_sha256: str | None
    full_model: str | None
    ev: float | None
    l0: float | None
    age_mae: float | None
    age_r: float | None
    odds_ratios: dict[str, OddsRatio]
    scorecard: tuple[int, int] | None

    @property
    def random_encoder(self) -> bool:
        return self.encoder_sha256 == RANDOM_SHA256


def _number(value: float | None, fmt: str, unit: str = "") -> str:
    return NOT_AVAILABLE if value is None else format(value, fmt) + unit


def _odds_ratio(entry: Any) -> OddsRatio:
    entry = entry if isinstance(entry, dict) else {}
    return OddsRatio(*(finite(entry.get(k)) for k in ("or_per_5y", "ci_low", "ci_high")),
                     skipped=str(entry.get("skipped", "")))


def headline(run_dir: RunDir) -> Headline:
    """Collect the headline numbers from manifest, leaderboard, associations and the scorecard."""
    manifest = read_optional_json(run_dir.manifest) or {}
    encoder = manifest.get("encoder") if isinstance(manifest.get("encoder"), dict) else {}
    has_board = run_dir.leaderboard.is_file()
    full = main_row(leaderboard_rows(run_dir), "full") if has_board else None
    associations = read_optional_json(run_dir.associations) or {}
    metrics = associations.get("metrics") or {}
    concepts = (associations.get("associations") or {}).get("concepts") or {}
    checks = scorecard(run_dir) if has_board else None
    return Headline(
        encoder_sha256=encoder.get("sha256"), full_model=None if full is None else full.model,
        ev=None if full is None else finite(full.ev), l0=None if full is None else finite(full.l0),
        age_mae=finite(metrics.get("mae")), age_r=finite(metrics.get("r")),
        odds_ratios={o: _odds_ratio(concepts.get(o)) for o in ("htn", "t2d")},
        scorecard=pass_count(checks) if checks is not None else None,
    )


def headline_lines(run_dir: RunDir) -> list[str]:
    """Lines printed at the end of `stsae run`: report path, encoder warning, headline numbers."""
    head = headline(run_dir)
    report = run_dir.report_html
    lines = [f"Report: {report}" if report.is_file() else "Report: not written (run `stsae report`)"]
    if head.random_encoder:
        lines.append(f"WARNING: {RANDOM_WARNING} (embeddings come from a randomly initialised encoder)")
    elif head.encoder_sha256 is None:
        lines.append("WARNING: encoder weights identity not recorded in manifest.json")
    lines.append(f"Full ST-SAE ({head.full_model or NOT_AVAILABLE}): EV {_number(head.ev, '.3f')}, "
                 f"L0 {_number(head.l0, '.1f')}")
    lines.append(f"Age (test): MAE {_number(head.age_mae, '.2f', ' y')}, r {_number(head.age_r, '.3f')}")
    lines.append("Δage odds ratio per 5 y: " + "; ".join(
        f"{outcome.upper()} {ratio.text()}" for outcome, ratio in head.odds_ratios.items()))
    if head.scorecard is not None:
        passed, graded = head.scorecard
        lines.append(f"Planted-truth scorecard: {passed}/{graded} checks passed")
    return lines
