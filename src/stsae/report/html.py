"""report.html: one self-contained file (figures as data URIs) that opens offline with no requests.

A strict Content-Security-Policy meta tag forbids every fetch except inline `data:` images and the
inline stylesheet, so even a stray URL could not leave the page. The one script (the concept dashboard,
dashboard.js) runs because the policy names its sha256 hash; any other script, inline or not, is
blocked. Required inputs are manifest.json, the leaderboard and the figures index; everything else is
optional and shows as "not available".
"""

from __future__ import annotations

import base64
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from stsae.errors import InputDataError
from stsae.eval.leaderboard import LeaderboardRow
from stsae.report.dashboard import dashboard_json
from stsae.report.figures import FigureInfo, read_figure_index
from stsae.report.headline import NOT_AVAILABLE, RANDOM_WARNING, Headline, headline
from stsae.report.scorecard import (
    Check,
    finite,
    front_keys,
    leaderboard_rows,
    main_row,
    read_optional_json,
    read_optional_parquet,
    row_key,
    scorecard,
)
from stsae.rundir import RunDir
from stsae.utils import io

log = logging.getLogger(__name__)

DASHBOARD_JS = resources.files("stsae.report").joinpath("dashboard.js").read_text(encoding="utf-8")
SECTIONS = (("models", "Models"), ("aging", "Vascular age"), ("concepts", "Concept cards"),
            ("dashboard", "Concept dashboard"), ("data", "Data and quality control"))
# (LeaderboardRow field, column label, number format, the one-line definition shown under the table)
LEADERBOARD_COLUMNS = (
    ("model", "Model", None, "file stem of the model (matched-sparsity rows repeat their baseline's name)"),
    ("family", "Family", None, "stsae, pca, ica or nmf"),
    ("variant", "Variant", None, "full ST-SAE, one of the five ablations, or the baseline"),
    ("d_dict", "K", None, "dictionary size (number of concepts)"),
    ("seed", "Seed", None, "training seed"),
    ("k_active", "Top-k", None, "matched sparsity: k-sparse codes re-encoded on the baseline's own dictionary, "
                                "k = the main model's L0"),
    ("ev", "EV", ".3f", "explained variance 1 − Σ‖z − ẑ‖² / Σ‖z − z̄‖² on test windows"),
    ("l0", "L0", ".1f", "mean number of active concepts per test window"),
    ("dead_fraction_train", "Dead", ".3f", "fraction of latents that did not fire on the last N training samples "
                                           "(Gao et al.; N in the model sidecar)"),
    ("consistency_heldout_aug", "Consist.", ".3f", "mean Jaccard of the active sets of z and of z under augmentation "
                                                   "families the model never trained against"),
    ("lag1_within_record", "Lag-1", ".3f", "within-record lag-1 autocorrelation of codes: adjacent-pair minus "
                                           "non-adjacent-pair r after demeaning each record (0 = no dynamics)"),
    ("seed_stability_mean_cos", "Stability", ".3f", "mean cosine of Hungarian-matched live atoms across seeds"),
    ("stability_null_data_mean_cos", "Null", ".3f", "the same for two untrained dictionaries initialised as the "
                                                   "model initialises them (stability must beat this)"),
)
AGE_METRICS = (("mae", "MAE (years)", ".2f"), ("r", "r (predicted vs age)", ".3f"), ("r2", "R²", ".3f"),
               ("delta_age_age_r", "r (Δage vs age) — ideally ≈ 0", ".3f"),
               ("delta_age_planted_partial_r", "partial r (Δage vs planted acceleration, given age)", ".3f"),
               ("delta_age_planted_raw_r", "raw r (Δage vs planted acceleration)", ".3f"))
FEATURE_SETS = (("concepts", "ST-SAE concepts"), ("raw_embedding", "Raw embedding"),
                ("best_baseline", "Best baseline"))


def content_security_policy(script: str) -> str:
    """Nothing may be fetched; only `script` (by its sha256) runs, only inline styles and data: images load."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


CONTENT_SECURITY_POLICY = content_security_policy(DASHBOARD_JS)


@dataclass(frozen=True)
class EmbeddedFigure:
    info: FigureInfo
    data_uri: str | None


def _fmt(value: Any, spec: str | None) -> str:
    if value is None:
        return "—"
    number = finite(value)
    if spec is not None and number is not None:
        return format(number, spec)
    return "yes" if value is True else "no" if value is False else str(value)


def _embed(run_dir: RunDir, info: FigureInfo) -> EmbeddedFigure:
    path = run_dir.figures_dir / f"{info.name}.png"
    if not info.available:
        return EmbeddedFigure(info, None)
    io.refuse_symlink(path)
    if not path.is_file():
        raise InputDataError(f"{path}: listed in figures/index.json but missing "
                             "(rerun `stsae figures --force`)")
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return EmbeddedFigure(info, f"data:image/png;base64,{encoded}")


def _run_summary(run_dir: RunDir, manifest: dict[str, Any],
                 rows: list[LeaderboardRow]) -> list[tuple[str, str]]:
    meta = read_optional_parquet(run_dir.meta)
    qc = read_optional_parquet(run_dir.qc)
    encoder = manifest.get("encoder") if isinstance(manifest.get("encoder"), dict) else {}
    items = [("Run", str(manifest.get("run_name", NOT_AVAILABLE))),
             ("Data source", str(manifest.get("data_source", NOT_AVAILABLE)))]
    if meta is not None and "patient_id" in meta.columns:
        items.append(("Patients / windows", f"{meta['patient_id'].nunique():,} / {len(meta):,}"))
        if "split" in meta.columns:
            per_split = meta.groupby("split")["patient_id"].nunique()
            items.append(("Patients per split", ", ".join(f"{s} {n}" for s, n in per_split.items())))
    else:
        items.append(("Patients / windows", NOT_AVAILABLE))
    if qc is not None and "qc_pass" in qc.columns and len(qc):
        items.append(("QC pass rate", f"{qc['qc_pass'].mean():.1%} ({int(qc['qc_pass'].sum()):,} windows)"))
    else:
        items.append(("QC pass rate", NOT_AVAILABLE))
    items.append(("Encoder weights sha256", str(encoder.get("sha256") or "not recorded")))
    full = main_row(rows, "full")
    sidecar = None
    if full is not None and full.seed is not None:
        checkpoint = run_dir.stsae_checkpoint("full", full.d_dict, full.seed)
        sidecar = read_optional_json(checkpoint.with_suffix(".json"))
    if isinstance(sidecar, dict):
        items.append(("Embedding ‖mean‖/‖std‖, effective rank",
                      f"{_fmt(sidecar.get('input_mean_norm_over_std'), '.1f')}, "
                      f"{_fmt(sidecar.get('effective_rank'), '.1f')}"))
    versions = manifest.get("versions") or {}
    items += [("Seed", str(manifest.get("seed", NOT_AVAILABLE))),
              ("Git commit", str(manifest.get("git_commit") or NOT_AVAILABLE)),
              ("Versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v) or NOT_AVAILABLE)]
    return items


def _stage_times(manifest: dict[str, Any]) -> tuple[list[tuple[str, str, str]], str]:
    stages = manifest.get("stages") if isinstance(manifest.get("stages"), dict) else {}
    rows = [(name, _fmt(entry.get("seconds"), ".1f"), str(entry.get("finished", "—")))
            for name, entry in stages.items() if isinstance(entry, dict)]
    total = sum(finite(e.get("seconds")) or 0.0 for e in stages.values() if isinstance(e, dict))
    return rows, f"{total:.1f}"


def _leaderboard_table(rows: list[LeaderboardRow], pareto: dict[str, Any] | None) -> list[dict[str, Any]]:
    front = front_keys(pareto)
    order = {"stsae": 0, "pca": 1, "ica": 2, "nmf": 3}
    ordered = sorted(rows, key=lambda r: (order.get(r.family, 9), r.variant != "full", r.variant, r.d_dict,
                                          r.seed or 0, r.matched_sparsity))
    return [{"cells": [_fmt(getattr(r, name), spec) for name, _, spec, _ in LEADERBOARD_COLUMNS],
             "on_front": row_key(r) in front, "full": r.variant == "full"} for r in ordered]


def _probe_table(rows: list[LeaderboardRow]) -> list[tuple[str, str, str, str]]:
    full = main_row(rows, "full")
    probe = {} if full is None else full.probe
    return [(factor, str(entry.get("metric", "")), _fmt(entry.get("value"), ".3f"),
             _fmt(entry.get("raw_value"), ".3f")) for factor, entry in probe.items()]


def _aging(associations: dict[str, Any] | None) -> dict[str, Any] | None:
    if associations is None:
        return None
    metrics = associations.get("metrics") or {}
    table = associations.get("associations") or {}
    assoc_rows = []
    for key, label in FEATURE_SETS:
        for outcome in ("htn", "t2d"):
            entry = (table.get(key) or {}).get(outcome)
            if not isinstance(entry, dict):
                continue
            if "skipped" in entry:
                assoc_rows.append((label, outcome.upper(), f"skipped: {entry['skipped']}", "", ""))
            else:
                odds, low, high = (_fmt(entry.get(k), ".2f") for k in ("or_per_5y", "ci_low", "ci_high"))
                assoc_rows.append((label, outcome.upper(), f"{odds} [{low}, {high}]",
                                   _fmt(entry.get("p"), ".2g"), _fmt(entry.get("n"), None)))
    bias = associations.get("bias_correction") or {}
    return {"metrics": [(label, _fmt(metrics.get(key), spec)) for key, label, spec in AGE_METRICS],
            "bias": (f"fitted on {bias.get('fitted_on', '?')}: slope {_fmt(bias.get('slope'), '.3f')}, "
                     f"intercept {_fmt(bias.get('intercept'), '.2f')}") if bias else NOT_AVAILABLE,
            "associations": assoc_rows}


def _qc_reasons(run_dir: RunDir) -> list[tuple[str, int]]:
    qc = read_optional_parquet(run_dir.qc)
    if qc is None or not {"qc_pass", "qc_reason"} <= set(qc.columns):
        return []
    counts = qc.loc[~qc["qc_pass"].astype(bool), "qc_reason"].fillna("unknown").value_counts()
    return [(str(reason), int(n)) for reason, n in counts.items()]


def _headline_cards(head: Headline) -> list[tuple[str, str, str]]:
    """(label, value, note) of the numbers shown first."""
    cards = [("Explained variance", _fmt(head.ev, ".3f"), head.full_model or "full model"),
             ("L0", _fmt(head.l0, ".1f"), "active concepts per window"),
             ("Age MAE", _fmt(head.age_mae, ".2f") + (" y" if head.age_mae is not None else ""),
              "test split"),
             ("Age r", _fmt(head.age_r, ".3f"), "predicted vs chronological")]
    cards += [(f"{outcome.upper()} odds ratio", ratio.text(), "per 5 y of Δage, 95% CI")
              for outcome, ratio in head.odds_ratios.items()]
    if head.scorecard is not None:
        cards.append(("Scorecard", f"{head.scorecard[0]}/{head.scorecard[1]}", "planted-truth checks passed"))
    return cards


def _scorecard_rows(checks: list[Check] | None) -> list[dict[str, str]] | None:
    if checks is None:
        return None
    status = {True: ("pass", "PASS"), False: ("miss", "MISS"), None: ("na", "n/a")}
    return [{"name": c.name, "value": _fmt(c.value, ".3f"), "threshold": c.threshold_text,
             "status": "info" if c.op is None else status[c.passed][0],
             "label": "info" if c.op is None else status[c.passed][1], "detail": c.detail} for c in checks]


def report_context(run_dir: RunDir, title: str, dashboard: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the template shows, read from the run directory; `dashboard` is the concept dashboard's
    data (`stsae.report.dashboard.build_dashboard`; None: not built, shown as not available)."""
    manifest = read_optional_json(run_dir.manifest)
    if not isinstance(manifest, dict):
        raise InputDataError(f"{run_dir.manifest}: missing or not a JSON object (run `stsae run` first)")
    rows = leaderboard_rows(run_dir)
    figures = [_embed(run_dir, info) for info in read_figure_index(run_dir)]
    head = headline(run_dir)
    stage_rows, total_seconds = _stage_times(manifest)
    return {
        "title": title, "csp": CONTENT_SECURITY_POLICY, "random_warning": RANDOM_WARNING,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "head": head, "cards": _headline_cards(head), "summary": _run_summary(run_dir, manifest, rows),
        "stages": stage_rows, "total_seconds": total_seconds,
        "leaderboard_columns": [(label, definition) for _, label, _, definition in LEADERBOARD_COLUMNS],
        "leaderboard": _leaderboard_table(rows, read_optional_json(run_dir.pareto)),
        "probe": _probe_table(rows),
        "sections": [(key, label, [f for f in figures if f.info.section == key]) for key, label in SECTIONS],
        "aging": _aging(read_optional_json(run_dir.associations)),
        "qc_reasons": _qc_reasons(run_dir),
        "scorecard": _scorecard_rows(scorecard(run_dir)),
        "dashboard": dashboard or {"available": False, "reason": "not built for this report"},
        "dashboard_json": dashboard_json(dashboard or {"available": False}), "dashboard_js": DASHBOARD_JS,
    }


def render_report(context: dict[str, Any]) -> str:
    """Render the packaged Jinja2 template (autoescaped; undefined names are errors, not blanks)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("stsae.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def write_report(run_dir: RunDir, title: str, dashboard: dict[str, Any] | None = None) -> Path:
    """Build report.html from the run directory and write it atomically; returns its path."""
    html = render_report(report_context(run_dir, title, dashboard))
    io.write_text(run_dir.report_html, html)
    log.info("report written: %s (%.1f MB)", run_dir.report_html, len(html) / 1e6)
    return run_dir.report_html
