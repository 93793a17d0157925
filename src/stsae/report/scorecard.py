"""Planted-truth scorecard: does the synthetic run recover what the simulator planted?

The synthetic cohort saves its ground truth (vascular age, heart rate, ...), so a run can be graded
against it. Each check is computed from the run directory's files alone and compares a measured value
with a stated threshold; nothing is hard-coded to pass, and a missing input shows as "not available"
instead of a pass. This module also holds the defensive readers the figures, report and headline share,
because the scorecard is defined as a pure function of those same files.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stsae.errors import InputDataError
from stsae.eval.leaderboard import LeaderboardRow, read_leaderboard_rows
from stsae.rundir import RunDir

log = logging.getLogger(__name__)

PLANTED_FACTORS = ("vascular_age", "hr_bpm", "resp_rate", "reflection_time", "aix")
BASELINE_FAMILIES = ("pca", "ica", "nmf")
VASCULAR_AGE_MIN_ABS_R = 0.8
PROBE_MIN_RATIO = 0.95
DEAD_MAX_FRACTION = 0.01
DELTA_AGE_PLANTED_MIN_R = 0.6
PLANTED_CHECK = "Δage vs planted vascular acceleration: partial r given age"
QC_MIN_RATE = 0.95

_OP_SYMBOLS = {">=": "≥", ">": ">", "<": "<"}
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, ">": operator.gt, "<": operator.lt}


# --- Reading the run directory -------------------------------------------------------------------


def read_optional_json(path: Path) -> Any | None:
    """JSON content, or None when the file is absent; a present but corrupt file is a user error."""
    if not path.is_file():
        log.info("%s: not available", path)
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def read_optional_parquet(path: Path) -> pd.DataFrame | None:
    """A parquet table, or None when the file is absent."""
    if not path.is_file():
        log.info("%s: not available", path)
        return None
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: not a readable parquet file ({exc})") from None


def leaderboard_rows(run_dir: RunDir) -> list[LeaderboardRow]:
    """The evaluate stage's rows (required: figures and report are built around them)."""
    return read_leaderboard_rows(run_dir.leaderboard)


def finite(value: Any) -> float | None:
    """`value` as a float if it is a finite number, else None (JSON null, NaN, strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def is_stsae(row: LeaderboardRow, variant: str | None = None) -> bool:
    """An ST-SAE row (never matched-sparsity), optionally of one variant."""
    return row.family == "stsae" and not row.matched_sparsity and variant in (None, row.variant)


def stsae_rows(rows: list[LeaderboardRow], variant: str | None = None) -> list[LeaderboardRow]:
    """ST-SAE rows (never matched-sparsity), optionally of one variant."""
    return [r for r in rows if is_stsae(r, variant)]


def main_dictionary_size(rows: list[LeaderboardRow]) -> int | None:
    """K of the main model (the row the evaluate stage marked `is_main`), else None."""
    main = main_row(rows)
    return None if main is None else main.d_dict


def main_row(rows: list[LeaderboardRow], variant: str = "full") -> LeaderboardRow | None:
    """The main model's row (`is_main`, set by evaluate from `stsae.train.grid.main_entry`), or for another
    variant its row at the main model's K and seed; None when the leaderboard has no main model."""
    main = next((r for r in stsae_rows(rows) if r.is_main), None)
    if main is None or variant == main.variant:
        return main
    return next((r for r in stsae_rows(rows, variant) if (r.d_dict, r.seed) == (main.d_dict, main.seed)), None)


def front_keys(pareto: Any) -> set[tuple[Any, Any, Any]]:
    """(model, l0, ev) of the Pareto-front points; a model name alone is ambiguous because a
    baseline's dense and matched-sparsity rows share it."""
    points = pareto.get("points", []) if isinstance(pareto, dict) else []
    return {(p.get("model"), p.get("l0"), p.get("ev"))
            for p in points if isinstance(p, dict) and p.get("on_front")}


def row_key(row: LeaderboardRow) -> tuple[Any, Any, Any]:
    """The key `front_keys` matches rows by."""
    return row.model, row.l0, row.ev


def is_synthetic(meta: pd.DataFrame | None) -> bool:
    """Planted-truth checks apply only when the windows carry the simulator's factors."""
    return meta is not None and "vascular_age" in meta.columns and "artifact" in meta.columns


# --- Checks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One graded claim: `passed` is None when the value is unavailable or the line is informational."""

    name: str
    value: float | None
    op: str | None
    threshold: float | None
    passed: bool | None
    detail: str = ""

    @property
    def threshold_text(self) -> str:
        if self.op is None or self.threshold is None:
            return "—"
        return f"{_OP_SYMBOLS[self.op]} {self.threshold:g}"


def _check(name: str, value: float | None, op: str | None, threshold: float | None,
           detail: str = "") -> Check:
    """Judge `value op threshold`; an unavailable value is never a pass."""
    if value is None:
        return Check(name, None, op, threshold, None, detail or "not available")
    passed = None if op is None or threshold is None else bool(_OPS[op](value, threshold))
    return Check(name, value, op, threshold, passed, detail)


@dataclass(frozen=True)
class ScorecardInputs:
    """What the scorecard reads: leaderboard rows, associations.json, and per-window artifact + QC.

    windows: one row per window with columns `artifact` (str, "none" when clean) and `qc_pass` (bool).
    """

    rows: list[LeaderboardRow]
    associations: dict[str, Any] | None
    windows: pd.DataFrame | None


def _factor_checks(full: LeaderboardRow | None) -> list[Check]:
    checks = []
    for factor in PLANTED_FACTORS:
        single = (full.single_concept.get(factor) if full else None) or {}
        abs_r = finite(single.get("abs_r"))
        detail = f"concept {single.get('concept')}" if abs_r is not None else ""
        if factor == "vascular_age":
            checks.append(_check(f"{factor}: best single concept |r|", abs_r, ">=",
                                 VASCULAR_AGE_MIN_ABS_R, detail))
        else:
            checks.append(_check(f"{factor}: best single concept |r|", abs_r, None, None, detail))
        probe = (full.probe.get(factor) if full else None) or {}
        value, raw = finite(probe.get("value")), finite(probe.get("raw_value"))
        if value is None or raw is None:
            checks.append(_check(f"{factor}: concept probe / raw-embedding probe", None, ">=",
                                 PROBE_MIN_RATIO))
        elif raw <= 0:
            checks.append(_check(f"{factor}: concept probe / raw-embedding probe", None, ">=",
                                 PROBE_MIN_RATIO, f"raw-embedding probe {raw:.3f} ≤ 0: ratio undefined"))
        else:
            checks.append(_check(f"{factor}: concept probe / raw-embedding probe", value / raw, ">=",
                                 PROBE_MIN_RATIO, f"{probe.get('metric', 'r2')} {value:.3f} vs {raw:.3f}"))
    return checks


def genuinely_sparsified(row: LeaderboardRow) -> bool:
    """A matched-sparsity row whose top-k really dropped components (K > k_active). With K <= k the
    "matched" code is the dense code (Jaccard consistency trivially 1): no fair comparison; older
    leaderboards still hold such rows."""
    return row.matched_sparsity and row.k_active is not None and row.d_dict > row.k_active


def _metric(row: LeaderboardRow | None, name: str) -> float | None:
    """Metric `name` of `row` if it is a finite number, else None (also without a row)."""
    return None if row is None else finite(getattr(row, name))


def _baseline_checks(rows: list[LeaderboardRow], full: LeaderboardRow | None) -> list[Check]:
    """Full ST-SAE vs each family's genuinely sparsified matched-sparsity row closest in EV, on
    consistency and lag-1."""
    checks = []
    full_ev = _metric(full, "ev")
    for family in BASELINE_FAMILIES:
        matched = [(ev, r) for r in rows
                   if r.family == family and genuinely_sparsified(r) and (ev := finite(r.ev)) is not None]
        rival = None
        if matched and full_ev is not None:
            rival = min(matched, key=lambda pair: abs(pair[0] - full_ev))[1]
        for metric, label in (("consistency_heldout_aug", "consistency on held-out augmentations"),
                              ("lag1_within_record", "lag-1 within records")):
            name = f"full ST-SAE − matched {family.upper()}: {label}"
            ours, theirs = _metric(full, metric), _metric(rival, metric)
            if rival is None and not matched:
                checks.append(_check(name, None, ">", 0.0, f"no {family.upper()} baseline with more "
                                     "components than k at matched sparsity"))
                continue
            if rival is None or ours is None or theirs is None:
                checks.append(_check(name, None, ">", 0.0))
                continue
            detail = f"{ours:.3f} vs {theirs:.3f} ({rival.model}, EV {full_ev:.3f} vs {rival.ev:.3f})"
            checks.append(_check(name, ours - theirs, ">", 0.0, detail))
    return checks


def _phenotype_lines(full: LeaderboardRow | None) -> list[Check]:
    """Informational: what the concepts add to age + sex for HTN / T2D on held-out patients (age alone
    already separates them well on the synthetic cohort, so the raw concept AUROC overstates them)."""
    lines = []
    for outcome in ("htn", "t2d"):
        entry = (full.probe.get(outcome) if full else None) or {}
        increment, ci = finite(entry.get("increment")), entry.get("increment_ci")
        detail = ""
        if increment is not None:
            detail = (f"AUROC {entry.get('adjusted_value'):.3f} (concepts + age + sex) vs "
                      f"{entry.get('age_sex_value'):.3f} (age + sex)")
            if isinstance(ci, list) and len(ci) == 2:
                detail += f", 95 % patient-bootstrap CI [{ci[0]:.3f}, {ci[1]:.3f}]"
        lines.append(_check(f"{outcome.upper()}: AUROC increment of concepts over age + sex", increment, None,
                            None, detail))
    return lines


def _association_checks(associations: dict[str, Any] | None) -> list[Check]:
    metrics = (associations or {}).get("metrics") or {}
    reference = ((associations or {}).get("predictors") or {}).get("planted_morphology") or {}
    reference_r = finite(reference.get("delta_age_planted_partial_r"))
    detail = ("" if reference_r is None else
              f"same pipeline on the exact planted morphology (reflection time, AIx, notch depth, HR, sex): "
              f"partial r {reference_r:.3f}")
    checks = [_check(PLANTED_CHECK, finite(metrics.get("delta_age_planted_partial_r")),
                     ">=", DELTA_AGE_PLANTED_MIN_R, detail)]
    concepts = ((associations or {}).get("associations") or {}).get("concepts") or {}
    for outcome in ("htn", "t2d"):
        entry = concepts.get(outcome) or {}
        odds, low, high = (finite(entry.get(k)) for k in ("or_per_5y", "ci_low", "ci_high"))
        name = f"{outcome.upper()}: odds ratio per 5 y Δage, lower 95% CI"
        if odds is None or low is None or high is None:
            reason = f"skipped: {entry['skipped']}" if "skipped" in entry else "not available"
            checks.append(_check(name, None, ">", 1.0, reason))
        else:
            checks.append(_check(name, low, ">", 1.0, f"OR {odds:.2f} [{low:.2f}, {high:.2f}]"))
    return checks


def _qc_checks(windows: pd.DataFrame | None) -> list[Check]:
    names = ("QC sensitivity (artifact windows rejected)", "QC specificity (clean windows kept)")
    if windows is None or not {"artifact", "qc_pass"} <= set(windows.columns):
        return [_check(name, None, ">=", QC_MIN_RATE) for name in names]
    bad = windows["artifact"].fillna("none").astype(str) != "none"
    passed = windows["qc_pass"].astype(bool)
    checks = []
    for name, mask, hit in ((names[0], bad, ~passed), (names[1], ~bad, passed)):
        n = int(mask.sum())
        if n == 0:
            checks.append(_check(name, None, ">=", QC_MIN_RATE, "no such windows"))
        else:
            hits = int((mask & hit).sum())
            checks.append(_check(name, hits / n, ">=", QC_MIN_RATE, f"{hits}/{n} windows"))
    return checks


def _dead_check(full: LeaderboardRow | None) -> Check:
    """Gao et al.'s training-time definition: no firing on the last N training samples."""
    dead = _metric(full, "dead_fraction_train")
    detail = ""
    if full and dead is not None:
        detail = (f"{full.model}: silent for the last {full.dead_window_samples} training "
                  f"samples; never fired on the {full.n_test_windows} test windows: "
                  f"{finite(full.never_fired_test_fraction) or 0.0:.3f}")
    return _check("dead concepts in full model (fraction, training definition)", dead, "<",
                  DEAD_MAX_FRACTION, detail)


def _stability_check(full: LeaderboardRow | None) -> Check:
    """Seed stability of the main model above the data-aware null (untrained data-initialised
    dictionaries), not above random unit vectors, which any data-like dictionary beats."""
    ours, null = _metric(full, "seed_stability_mean_cos"), _metric(full, "stability_null_data_mean_cos")
    name = "seed stability − data-aware null (mean matched cos, live atoms)"
    if full is None or ours is None or null is None:
        return _check(name, None, ">", 0.0)
    return _check(name, ours - null, ">", 0.0,
                  f"{ours:.3f} vs {null:.3f} for untrained data-initialised dictionaries "
                  f"({full.stability_live_atoms} live atoms; isotropic null "
                  f"{finite(full.stability_null_isotropic_mean_cos) or float('nan'):.3f})")


def build_scorecard(inputs: ScorecardInputs) -> list[Check]:
    """Every planted-truth check, in report order, judged from `inputs` alone."""
    full = main_row(inputs.rows, "full")
    return [
        *_factor_checks(full),
        *_phenotype_lines(full),
        *_baseline_checks(inputs.rows, full),
        _dead_check(full),
        _stability_check(full),
        *_association_checks(inputs.associations),
        *_qc_checks(inputs.windows),
    ]


def scorecard_inputs(run_dir: RunDir) -> ScorecardInputs | None:
    """Read the scorecard's inputs, or None when the run is not on the synthetic cohort."""
    meta = read_optional_parquet(run_dir.meta)
    if meta is None or not is_synthetic(meta):
        return None
    qc = read_optional_parquet(run_dir.qc)
    windows = None
    if qc is not None:
        for path, frame, column in ((run_dir.meta, meta, "window_id"), (run_dir.qc, qc, "window_id"),
                                    (run_dir.qc, qc, "qc_pass")):
            if column not in frame.columns:
                raise InputDataError(f"{path}: missing column '{column}'")
        windows = meta[["window_id", "artifact"]].merge(qc[["window_id", "qc_pass"]], on="window_id")
    associations = read_optional_json(run_dir.associations)
    return ScorecardInputs(leaderboard_rows(run_dir), associations, windows)


def scorecard(run_dir: RunDir) -> list[Check] | None:
    """The planted-truth scorecard of a run directory; None for real (non-synthetic) data."""
    inputs = scorecard_inputs(run_dir)
    return None if inputs is None else build_scorecard(inputs)


def pass_count(checks: list[Check]) -> tuple[int, int]:
    """(passed, graded): every check with a threshold is graded; an unavailable one is not passed."""
    graded = [c for c in checks if c.op is not None]
    return sum(c.passed is True for c in graded), len(graded)
