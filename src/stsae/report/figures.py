"""Every figure of the report, drawn headless (Agg) from the run directory's files as PNG + SVG.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so no global figure state leaks
between plots or tests. Each plot returns a `FigureInfo`; when its inputs are missing it returns one
marked unavailable with the reason, so the report says "not available" instead of the stage crashing.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from stsae.errors import InputDataError
from stsae.eval.leaderboard import LeaderboardRow
from stsae.report.example_windows import plot_qc_rejections, plot_windows_by_age_decile
from stsae.report.scorecard import (
    finite,
    front_keys,
    is_stsae,
    leaderboard_rows,
    main_dictionary_size,
    main_row,
    read_optional_json,
    read_optional_parquet,
    row_key,
    stsae_rows,
)
from stsae.rundir import RunDir
from stsae.utils import io

log = logging.getLogger(__name__)

ABLATION_ORDER = ("full", "no_smooth", "no_stab", "no_div", "no_renorm", "vanilla")
FAMILY_COLORS = {"pca": "#d95f02", "ica": "#7570b3", "nmf": "#1b9e77"}
VARIANT_COLORS = {"full": "#0b4f8a", "no_smooth": "#6baed6", "no_stab": "#e6ab02", "no_div": "#a6761d",
                  "no_renorm": "#e7298a", "vanilla": "#666666"}
HIGH_COLOR, LOW_COLOR = "#c0392b", "#2471a3"
PNG_DPI = 130
# A figure name is a file name inside figures/: no separator, no leading dot ("..", hidden files).
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "legend.fontsize": 8.5, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "figure.facecolor": "white", "svg.hashsalt": "stsae",
}
ABLATION_METRICS = (("ev", "EV", True), ("consistency_jaccard", "Consistency (Jaccard)", True),
                    ("lag1_within_record", "Lag-1 within records", True),
                    ("seed_stability_mean_cos", "Seed stability (mean cos)", True),
                    ("dead_fraction_train", "Dead fraction (training)", False))


@dataclass(frozen=True)
class FigureInfo:
    """One figure of the report: files `figures/<name>.png|svg` when `available`, else the reason."""

    name: str
    section: str
    title: str
    caption: str
    available: bool = True
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FigureInfo:
        return cls(**{k: data[k] for k in ("name", "section", "title", "caption", "available", "note")})


def _unavailable(name: str, section: str, title: str, reason: str) -> FigureInfo:
    log.info("figure %s not drawn: %s", name, reason)
    return FigureInfo(name, section, title, "", available=False, note=reason)


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    with mpl.rc_context(STYLE):
        yield Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, out_dir: Path, name: str) -> None:
    """Write `<name>.png` and `<name>.svg` atomically (a killed run never leaves half a figure)."""
    with mpl.rc_context(STYLE):
        with io.atomic_path(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, format="png", dpi=PNG_DPI, metadata={"Software": None})
        with io.atomic_path(out_dir / f"{name}.svg") as tmp:
            fig.savefig(tmp, format="svg", metadata={"Date": None})


def _plain_log_axis(axis: Axis) -> None:
    """Log-scale ticks at 1-2-5 steps written as plain numbers (2, 5, 10), not 2×10^0."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _no_data(ax: Axes, text: str = "not available") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888888")
    ax.set_xticks([])
    ax.set_yticks([])


# --- Models: Pareto, ablations, K-sweep, stability ---------------------------------------------


def ev_axis_bottom(evs: list[float]) -> float | None:
    """Lower EV limit that keeps the interesting range readable, or None when nothing is off-scale.

    A model worse than predicting the mean (EV < 0, e.g. truncated NMF at −1.9) or far below the rest
    (below Q1 − 3·IQR, Tukey's far-out fence) would stretch the axis until every other model sits on one
    line; those are drawn at the bottom edge instead. The fence is never below 0.
    """
    values = np.asarray(evs, dtype=np.float64)
    q1, q3 = np.percentile(values, [25, 75])
    fence = max(0.0, q1 - 3 * (q3 - q1))
    inside = values[values >= fence]
    if len(inside) == len(values) or len(inside) == 0:
        return None
    span = max(float(inside.max() - inside.min()), 0.02)
    return float(inside.min() - 0.12 * span)


def _clip_ev_axis(ax: Axes, points: list[Point]) -> int:
    """Clip the y axis at `ev_axis_bottom`; mark each off-scale model with ▼ and its EV. Returns how many."""
    bottom = ev_axis_bottom([p.ev for p in points])
    if bottom is None:
        return 0
    top = max(p.ev for p in points)
    ax.set_ylim(bottom, top + 0.06 * (top - bottom))
    below = sorted((p for p in points if p.ev < bottom), key=lambda p: p.l0)
    for p in below:
        ax.scatter([p.l0], [bottom], marker="v", s=60, color="#c0262d", zorder=6, clip_on=False)
        ax.annotate(f"{p.row.model}: EV {p.ev:.2f}", (p.l0, bottom), textcoords="offset points",
                    xytext=(7, 3), ha="left", fontsize=7, color="#c0262d")
    return len(below)


def spread_positions(values: list[float], min_gap: float) -> list[float]:
    """Positions as close as possible to `values` (any order) with consecutive ones at least min_gap apart,
    so stacked labels never overlap: the lowest stays, each next one is pushed up; the order is kept."""
    order = np.argsort(values, kind="stable")
    placed = np.asarray(values, dtype=np.float64)[order].copy()
    for i in range(1, len(placed)):
        placed[i] = max(placed[i], placed[i - 1] + min_gap)
    out = np.empty_like(placed)
    out[order] = placed
    return out.tolist()


def _label_sweep(ax: Axes, sweep: list[Point]) -> None:
    """K=… labels of the K-sweep points, stacked to their right with leader lines: at the frontier the
    sweep's points sit almost on top of each other, and fixed offsets wrote the labels over one another."""
    if len(sweep) < 2:
        return
    ax.get_xlim(), ax.get_ylim()  # settle pending autoscaling before converting to axes fractions
    to_axes = ax.transAxes.inverted()
    spots = [to_axes.transform(ax.transData.transform((p.l0, p.ev))) for p in sweep]
    ys = spread_positions([float(y) for _, y in spots], 0.055)
    for p, (x, _), y in zip(sweep, spots, ys, strict=True):
        ax.annotate(f"K={p.row.d_dict}", (p.l0, p.ev), xytext=(min(x + 0.07, 0.97), y), textcoords="axes fraction",
                    fontsize=7.5, color=VARIANT_COLORS["full"], va="center",
                    arrowprops={"arrowstyle": "-", "color": VARIANT_COLORS["full"], "lw": 0.6, "alpha": 0.6})


class Point(NamedTuple):
    """A leaderboard row on the (L0, EV) plane: both finite, L0 > 0 (the axis is logarithmic)."""

    row: LeaderboardRow
    l0: float
    ev: float


def _plane(rows: list[LeaderboardRow]) -> list[Point]:
    return [Point(r, l0, ev) for r in rows
            if (l0 := finite(r.l0)) is not None and (ev := finite(r.ev)) is not None and l0 > 0]


def _xy(points: list[Point]) -> tuple[list[float], list[float]]:
    return [p.l0 for p in points], [p.ev for p in points]


def plot_pareto(rows: list[LeaderboardRow], pareto: dict[str, Any] | None, out_dir: Path) -> FigureInfo:
    """EV vs L0 for ST-SAE variants, the K-sweep and baselines (matched-sparsity curves), front marked."""
    name, title = "pareto", "Reconstruction vs sparsity"
    points = _plane(rows)
    if not points:
        return _unavailable(name, "models", title, "no leaderboard row has both EV and L0")
    main_k = main_dictionary_size(rows)
    with _figure(7.2, 4.6) as fig:
        ax = fig.subplots()
        sweep = sorted((p for p in points if is_stsae(p.row, "full") and p.row.seed == _main_seed(rows)),
                       key=lambda p: p.row.d_dict)
        if len(sweep) > 1:
            ax.plot(*_xy(sweep), color=VARIANT_COLORS["full"], lw=1, alpha=0.5, zorder=2)
        for variant in ABLATION_ORDER:
            chosen = [p for p in points if is_stsae(p.row, variant) and p.row.d_dict == main_k]
            if chosen:
                ax.scatter(*_xy(chosen), s=55 if variant == "full" else 30, color=VARIANT_COLORS[variant],
                           edgecolor="white", zorder=4, label=f"ST-SAE {variant} (K={main_k})")
        for family, color in FAMILY_COLORS.items():
            matched = sorted((p for p in points if p.row.family == family and p.row.matched_sparsity),
                             key=lambda p: p.l0)
            dense = [p for p in points if p.row.family == family and not p.row.matched_sparsity]
            if matched:
                ax.plot(*_xy(matched), "-o", color=color, ms=4, lw=1.2, zorder=3,
                        label=f"{family.upper()} matched sparsity")
            if dense:
                ax.scatter(*_xy(dense), marker="s", s=22, facecolor="none", edgecolor=color, zorder=3,
                           label=f"{family.upper()} dense")
        note = ""
        if pareto is None:
            note = "eval/pareto.json not available: frontier not drawn."
        else:
            on_front = front_keys(pareto)
            front = sorted((p for p in points if row_key(p.row) in on_front), key=lambda p: p.l0)
            if front:
                ax.step(*_xy(front), where="post", color="#222222", lw=1.6, ls="--", zorder=5,
                        label="Pareto frontier")
                ax.scatter(*_xy(front), s=120, facecolor="none", edgecolor="#222222", lw=1.2, zorder=5)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        off_scale = _clip_ev_axis(ax, points)
        if off_scale:
            note = (note + " " if note else "") + f"{off_scale} model(s) below the axis, marked ▼ with their EV."
        _label_sweep(ax, sweep)
        ax.set_xlabel("L0 (mean active concepts per window, log scale)")
        ax.set_ylabel("Explained variance (test split)")
        ax.set_title(title)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "models", title,
                      "Every model on the held-out test split. Filled circles: ST-SAE variants at the "
                      "main dictionary size; the thin line joins the K-sweep; coloured lines: baselines "
                      "restricted to their top-k components per window; open squares: dense baselines. "
                      "Circled points form the Pareto frontier (no model has higher EV at lower or equal "
                      "L0).", note=note)


def _main_seed(rows: list[LeaderboardRow]) -> int | None:
    """Seed of the main model (the row evaluate marked `is_main`): the K-sweep is trained at it."""
    main = main_row(rows)
    return None if main is None else main.seed


def _seed_spread(rows: list[LeaderboardRow], metric: str) -> tuple[float, float, float, int] | None:
    """(mean, min, max, n) of the metric field `metric` over the rows (seeds), or None if no row has it."""
    values = [v for v in (finite(getattr(r, metric)) for r in rows) if v is not None]
    if not values:
        return None
    return float(np.mean(values)), min(values), max(values), len(values)


def plot_ablations(rows: list[LeaderboardRow], out_dir: Path) -> FigureInfo:
    """Each metric for full vs the ablations at the main K; error bars span the seeds."""
    name, title = "ablations", "Ablations: what each loss term buys"
    main_k = main_dictionary_size(rows)
    by_variant = {v: [r for r in stsae_rows(rows, v) if r.d_dict == main_k] for v in ABLATION_ORDER}
    variants = [v for v in ABLATION_ORDER if by_variant[v]]
    if len(variants) < 2:
        return _unavailable(name, "models", title, "needs the full model and at least one ablation")
    n_seeds = max(len(by_variant[v]) for v in variants)
    with _figure(12.5, 3.4) as fig:
        axes = fig.subplots(1, len(ABLATION_METRICS))
        for ax, (metric, label, higher_better) in zip(axes, ABLATION_METRICS, strict=True):
            stats = [_seed_spread(by_variant[v], metric) for v in variants]
            if all(s is None for s in stats):
                _no_data(ax)
            else:
                x = np.arange(len(variants))
                means = [s[0] if s else np.nan for s in stats]
                err = np.array([[s[0] - s[1], s[2] - s[0]] if s else [0, 0] for s in stats]).T
                ax.bar(x, means, yerr=err, capsize=3, color=[VARIANT_COLORS[v] for v in variants],
                       error_kw={"lw": 1})
                ax.set_xticks(x, variants, rotation=40, ha="right")
            ax.set_title(f"{label} {'↑' if higher_better else '↓'}")
            ax.grid(axis="x", visible=False)
        axes[0].set_ylabel("value on test split")
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "models", title,
                      f"Full ST-SAE vs the ablations at K={main_k}. Bars: mean over {n_seeds} seed(s); "
                      "error bars: min–max over seeds. Arrows show which direction is better.")


def plot_k_sweep(rows: list[LeaderboardRow], out_dir: Path) -> FigureInfo:
    """EV, dead fraction, consistency and lag-1 of the full model as the dictionary grows."""
    name, title = "k_sweep", "Dictionary size sweep (full ST-SAE)"
    by_k: dict[int, list[LeaderboardRow]] = defaultdict(list)
    for r in stsae_rows(rows, "full"):
        by_k[r.d_dict].append(r)
    if len(by_k) < 2:
        return _unavailable(name, "models", title, "fewer than two dictionary sizes in the leaderboard")
    ks = sorted(by_k)
    panels = ((("ev", "EV"),), (("dead_fraction_train", "dead fraction (training)"),),
              (("consistency_jaccard", "consistency (Jaccard)"), ("lag1_within_record", "lag-1 within records")))
    ylabels = ("Explained variance", "Dead concept fraction", "Temporal / augmentation agreement")
    with _figure(11, 3.3) as fig:
        axes = fig.subplots(1, 3)
        for ax, panel, ylabel in zip(axes, panels, ylabels, strict=True):
            for (metric, label), color in zip(panel, (VARIANT_COLORS["full"], "#e6ab02"), strict=False):
                means = [s[0] if (s := _seed_spread(by_k[k], metric)) else np.nan for k in ks]
                ax.plot(ks, means, "-o", color=color, ms=5, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
            ax.set_xlabel("dictionary size K (concepts)")
            ax.set_ylabel(ylabel)
            if panel[0][0] == "dead_fraction_train":
                ax.set_ylim(bottom=0, top=max(0.01, ax.get_ylim()[1]))
            if len(panel) > 1:
                ax.legend(frameon=False)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "models", title,
                      "The full model trained at each K of the sweep (mean over seeds where several exist).")


def plot_seed_stability(rows: list[LeaderboardRow], out_dir: Path) -> FigureInfo:
    """Mean Hungarian-matched decoder cosine across seeds per variant, against the data-aware null.

    The leaderboard stores summary statistics only (mean cosine, fractions above 0.7 / 0.9, null mean),
    so the figure compares means; the caption says so rather than pretending to show a distribution.
    """
    name, title = "seed_stability", "Seed stability vs data-aware null"
    main_k = main_dictionary_size(rows)
    variants, stats = [], []
    for variant in ABLATION_ORDER:
        chosen = [r for r in stsae_rows(rows, variant) if r.d_dict == main_k]
        spread = _seed_spread(chosen, "seed_stability_mean_cos")
        if spread is not None:
            variants.append(variant)
            stats.append((spread, *(_seed_spread(chosen, key) for key in (
                "stability_null_data_mean_cos", "seed_stability_frac_07", "seed_stability_frac_09"))))
    if not variants:
        return _unavailable(name, "models", title, "no leaderboard row has seed_stability_mean_cos")
    with _figure(7.2, 3.8) as fig:
        ax = fig.subplots()
        x = np.arange(len(variants))
        width = 0.38
        means = [s[0][0] for s in stats]
        err = np.array([[s[0][0] - s[0][1], s[0][2] - s[0][0]] for s in stats]).T
        ax.bar(x - width / 2, means, width, yerr=err, capsize=3, color=[VARIANT_COLORS[v] for v in variants],
               label="matched atoms across seeds")
        nulls = [s[1][0] if s[1] else np.nan for s in stats]
        ax.bar(x + width / 2, nulls, width, color="#cccccc", hatch="//", edgecolor="#888888",
               label="untrained data-initialised null")
        for xi, s in zip(x, stats, strict=True):
            if s[2] and s[3]:
                ax.annotate(f"≥0.7: {s[2][0]:.0%}\n≥0.9: {s[3][0]:.0%}", (xi - width / 2, s[0][2]),
                            textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        ax.set_xticks(x, variants)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("mean cosine of Hungarian-matched atoms")
        ax.set_title(title)
        ax.legend(frameon=False, loc="upper right", ncols=2)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "models", title,
                      f"Live decoder atoms of each variant (K={main_k}) matched across seed replicates with "
                      "the Hungarian algorithm; hatched bars: the same statistic for two untrained "
                      "dictionaries initialised from data rows as the trainer does (the data-aware null). "
                      "Labels: share of atoms with matched cosine ≥ 0.7 and ≥ 0.9.",
                      note="Per-atom matched cosines are not stored in the leaderboard, so means are shown "
                           "instead of a histogram.")


# --- Aging: Δage -------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {missing}")


def _test_or_all(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    test = frame[frame["split"] == "test"] if "split" in frame.columns else frame.iloc[:0]
    return (test, "test split") if len(test) else (frame, "all splits")


def plot_age_scatter(predictions: pd.DataFrame, out_dir: Path) -> FigureInfo:
    """Predicted (filled) and bias-corrected (open) age vs chronological age, one point per test patient.

    MAE and r are computed from the raw predictions, as the aging stage reports them; Δage uses the
    corrected ones.
    """
    name, title = "age_scatter", "Predicted vs chronological age"
    data, scope = _test_or_all(predictions.dropna(subset=["age", "age_pred", "age_pred_corrected"]))
    if len(data) < 3:
        return _unavailable(name, "aging", title, "fewer than 3 patients with predictions")
    age = data["age"].to_numpy(float)
    pred, corrected = data["age_pred"].to_numpy(float), data["age_pred_corrected"].to_numpy(float)
    mae, r = float(np.mean(np.abs(pred - age))), float(np.corrcoef(age, pred)[0, 1])
    with _figure(5.0, 4.6) as fig:
        ax = fig.subplots()
        values = np.concatenate([age, pred, corrected])
        lo, hi = float(values.min()) - 2, float(values.max()) + 2
        ax.plot([lo, hi], [lo, hi], ls="--", color="#888888", lw=1, label="identity")
        ax.scatter(age, pred, s=24, color=VARIANT_COLORS["full"], alpha=0.8, edgecolor="white", lw=0.4,
                   label="predicted")
        ax.scatter(age, corrected, s=24, facecolor="none", edgecolor=HIGH_COLOR, lw=0.9,
                   label="bias-corrected")
        ax.text(0.04, 0.96, f"n = {len(age)}\nMAE = {mae:.1f} y\nr = {r:.2f}", transform=ax.transAxes,
                va="top", fontsize=9, bbox={"facecolor": "white", "edgecolor": "#dddddd"})
        ax.legend(frameon=False, loc="lower right")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("chronological age (years)")
        ax.set_ylabel("predicted age (years)")
        ax.set_title(title)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "aging", title, f"One point per patient ({scope}). MAE and r: raw predictions "
                      "(filled); Δage = bias-corrected prediction (open) − chronological age.")


def plot_delta_age_groups(delta: pd.DataFrame, out_dir: Path) -> FigureInfo:
    """Δage distributions with vs without hypertension and type-2 diabetes."""
    name, title = "delta_age_groups", "Δage by condition"
    data, scope = _test_or_all(delta.dropna(subset=["delta_age"]))
    outcomes = [o for o in ("htn", "t2d") if o in data.columns and data[o].notna().any()]
    if not outcomes:
        return _unavailable(name, "aging", title, "no HTN/T2D labels")
    with _figure(3.0 * len(outcomes) + 0.6, 3.8) as fig:
        axes = np.atleast_1d(fig.subplots(1, len(outcomes), sharey=True))
        for ax, outcome in zip(axes, outcomes, strict=True):
            groups = [data.loc[data[outcome] == value, "delta_age"].to_numpy(float) for value in (0, 1)]
            labels = [f"{prefix}{outcome.upper()}\n(n={len(group)})"
                      for prefix, group in zip(("no ", ""), groups, strict=True)]
            present = [i for i, g in enumerate(groups) if len(g)]
            ax.boxplot([groups[i] for i in present], positions=present, widths=0.5, showfliers=False,
                       medianprops={"color": "#222222"})
            for i in present:
                ax.scatter(i + _spread(len(groups[i])), groups[i], s=12, alpha=0.6,
                           color=(LOW_COLOR, HIGH_COLOR)[i], zorder=3)
            ax.axhline(0, color="#888888", lw=0.8, ls="--")
            ax.set_xticks([0, 1], labels)
            ax.set_xlim(-0.6, 1.6)
            ax.grid(axis="x", visible=False)
        axes[0].set_ylabel("Δage = corrected predicted − chronological (years)")
        fig.suptitle(title)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "aging", title, f"Per-patient Δage ({scope}); boxes: median and quartiles.")


def _spread(n: int, half_width: float = 0.12) -> np.ndarray:
    """Deterministic horizontal offsets (golden-ratio sequence) so overlapping points stay visible
    without a random draw."""
    return ((np.arange(n) * 0.6180339887) % 1.0 - 0.5) * 2 * half_width


_SOURCE_LABELS = {"concepts": "ST-SAE concepts", "raw_embedding": "raw embedding",
                  "best_baseline": "best baseline"}


def plot_forest(associations: dict[str, Any], out_dir: Path) -> FigureInfo:
    """Odds ratios of HTN and T2D per 5 years of Δage (age- and sex-adjusted) with 95% CI, per feature set."""
    name, title = "forest", "Δage associations (odds ratio per 5 years)"
    table = associations.get("associations") or {}
    entries = [(f"{_SOURCE_LABELS.get(source, source)} · {outcome.upper()}", table[source][outcome])
               for source in table if isinstance(table[source], dict)
               for outcome in ("htn", "t2d") if isinstance(table[source].get(outcome), dict)]
    if not any(finite(entry.get("or_per_5y")) is not None for _, entry in entries):
        return _unavailable(name, "aging", title, "no association was fitted (reasons in the table above)")
    with _figure(6.8, 0.45 * len(entries) + 1.4) as fig:
        ax = fig.subplots()
        y = np.arange(len(entries))[::-1]
        for yi, (_, entry) in zip(y, entries, strict=True):
            odds, low, high = (finite(entry.get(k)) for k in ("or_per_5y", "ci_low", "ci_high"))
            if odds is None or low is None or high is None:
                reason = str(entry.get("skipped", "not available")).split(";")[0]
                ax.text(1.0, yi, f"  skipped: {reason[:50]}", va="center", fontsize=8, color="#888888",
                        clip_on=True, in_layout=False)
                continue
            color = HIGH_COLOR if low > 1 or high < 1 else "#555555"
            ax.plot([low, high], [yi, yi], color=color, lw=2)
            ax.plot(odds, yi, "D", color=color, ms=6)
            ax.annotate(f"{odds:.2f} [{low:.2f}, {high:.2f}]", (high, yi), textcoords="offset points",
                        xytext=(6, -3), fontsize=8)
        ax.axvline(1, color="#888888", ls="--", lw=1)
        ax.set_xscale("log")
        _plain_log_axis(ax.xaxis)
        ax.set_ylim(-0.6, len(entries) - 0.4)
        ax.set_yticks(y, [label for label, _ in entries])
        ax.set_xlabel("odds ratio per 5 years of Δage (95% CI, log scale; adjusted for age and sex)")
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.35)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "aging", title, "Logistic regressions of each condition on Δage; red: the 95% "
                      "confidence interval excludes 1.")


# --- Concepts: grounding -----------------------------------------------------------------------


def plot_concept_card(concept: int, pulses: dict[str, np.ndarray], row: int,
                      correlations: pd.DataFrame | None, out_dir: Path) -> FigureInfo:
    """Average pulse of the concept's highest vs lowest decile windows (bands), plus top morphology rho.

    pulses: arrays of concept_pulses.npz, each float[C, L]; `row` selects this concept's row.
    """
    name, title = f"concept_{concept}", f"Concept {concept}"
    length = pulses["high_mean"].shape[1]
    phase = np.linspace(0, 1, length)
    top = pd.DataFrame()
    if correlations is not None:
        own = correlations[correlations["concept"] == concept].dropna(subset=["rho"])
        top = own.reindex(own["rho"].abs().sort_values(ascending=False).index).head(5)
    with _figure(8.4, 3.0) as fig:
        ax, bars = fig.subplots(1, 2, width_ratios=[1.3, 1])
        for part, color, label in (("high", HIGH_COLOR, "highest decile"),
                                   ("low", LOW_COLOR, "lowest decile")):
            ax.fill_between(phase, pulses[f"{part}_lo"][row], pulses[f"{part}_hi"][row], color=color,
                            alpha=0.2, lw=0)
            ax.plot(phase, pulses[f"{part}_mean"][row], color=color, lw=2, label=label)
        ax.set_xlabel("beat phase (onset to onset, fraction of cycle)")
        ax.set_ylabel("amplitude (normalised)")
        ax.set_title(f"{title}: average pulse")
        ax.legend(frameon=False)
        if top.empty:
            _no_data(bars, "no morphology correlations")
        else:
            yy = np.arange(len(top))[::-1]
            bars.barh(yy, top["rho"], color=[HIGH_COLOR if v > 0 else LOW_COLOR for v in top["rho"]])
            q = top["q"] if "q" in top.columns else pd.Series(np.nan, index=top.index)
            bars.set_yticks(yy, [f"{f}\n(q={qv:.1g})" if np.isfinite(qv) else str(f)
                                 for f, qv in zip(top["feature"], q, strict=True)])
            bars.axvline(0, color="#888888", lw=0.8)
            bars.set_xlim(-1, 1)
            bars.set_xlabel("Spearman ρ with concept activation")
            bars.set_title("top morphology correlations")
            bars.grid(axis="y", visible=False)
        save_figure(fig, out_dir, name)
    return FigureInfo(name, "concepts", title, "Red: mean beat of the windows where the concept is most "
                      "active; blue: least active; bands: bootstrap interval. Bars: strongest Spearman "
                      "correlations with pulse morphology (q: Benjamini–Hochberg FDR).")


PULSE_KEYS = ("concepts", "high_mean", "high_lo", "high_hi", "low_mean", "low_lo", "low_hi")


def read_concept_pulses(path: Path) -> dict[str, np.ndarray] | None:
    """concept_pulses.npz with shapes checked (concepts int[C]; the rest float[C, L]), or None if absent."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            arrays = {k: np.asarray(npz[k]) for k in PULSE_KEYS}
    except KeyError as exc:
        raise InputDataError(f"{path}: missing array {exc}") from None
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: not a readable .npz ({exc})") from None
    n = arrays["concepts"].shape[0]
    for key in PULSE_KEYS[1:]:
        shape = arrays[key].shape
        if len(shape) != 2 or shape != arrays["high_mean"].shape or shape[0] != n:
            raise InputDataError(f"{path}: '{key}' has shape {arrays[key].shape}, expected [{n}, L]")
    return arrays


def read_concept_correlations(path: Path) -> pd.DataFrame | None:
    """concept_morphology.csv (concept, feature, rho, p, q), or None if absent."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    _require_columns(frame, ("concept", "feature", "rho"), path)
    return frame


# --- Data: example windows (drawn by stsae.report.example_windows) -----------------------------


def _example_window_figures(run_dir: RunDir, out_dir: Path) -> list[FigureInfo]:
    """Example windows per age decile and QC rejections (drawn by stsae.report.example_windows)."""
    ages_title, qc_title = "Example windows per age decile", "QC rejection examples"
    meta, qc = read_optional_parquet(run_dir.meta), read_optional_parquet(run_dir.qc)
    if meta is None or not run_dir.windows.is_file():
        return [_unavailable(name, "data", title, "windows/ not available")
                for name, title in (("example_windows", ages_title), ("qc_rejections", qc_title))]
    windows = io.open_memmap_rows(run_dir.windows)
    plot_windows_by_age_decile(windows, meta, out_dir / "example_windows.png", qc=qc)
    infos = [FigureInfo("example_windows", "data", ages_title,
                        "One preprocessed window (band-passed, z-scored, 125 Hz) per age decile; the first "
                        "5 s of each 10 s window are shown.")]
    if qc is None:
        return [*infos, _unavailable("qc_rejections", "data", qc_title, "windows/qc.parquet not available")]
    plot_qc_rejections(windows, meta, qc, out_dir / "qc_rejections.png")
    return [*infos, FigureInfo("qc_rejections", "data", qc_title,
                               "One rejected window per QC reason, with the planted artifact where known.")]


# --- The figures stage's work ------------------------------------------------------------------


def draw_figures(run_dir: RunDir) -> list[FigureInfo]:
    """Draw every figure into `figures/` from the run's files; unavailable ones carry their reason.

    Requires eval/leaderboard.json; every other input is optional.
    """
    out_dir = run_dir.figures_dir
    rows = leaderboard_rows(run_dir)
    infos = [plot_pareto(rows, read_optional_json(run_dir.pareto), out_dir), plot_ablations(rows, out_dir),
             plot_k_sweep(rows, out_dir), plot_seed_stability(rows, out_dir)]

    predictions_path = run_dir.predictions
    predictions = read_optional_parquet(predictions_path)
    if predictions is None:
        infos.append(_unavailable("age_scatter", "aging", "Predicted vs chronological age",
                                  f"{predictions_path.name} not available"))
    else:
        _require_columns(predictions, ("patient_id", "age", "age_pred", "age_pred_corrected"),
                         predictions_path)
        infos.append(plot_age_scatter(predictions, out_dir))
    delta_path = run_dir.aging_dir / "delta_age.parquet"
    delta = read_optional_parquet(delta_path)
    if delta is None:
        infos.append(_unavailable("delta_age_groups", "aging", "Δage by condition",
                                  f"{delta_path.name} not available"))
    else:
        _require_columns(delta, ("patient_id", "delta_age"), delta_path)
        infos.append(plot_delta_age_groups(delta, out_dir))
    associations = read_optional_json(run_dir.associations)
    infos.append(plot_forest(associations, out_dir) if isinstance(associations, dict) else
                 _unavailable("forest", "aging", "Δage associations", "associations.json not available"))

    pulses = read_concept_pulses(run_dir.grounding_dir / "concept_pulses.npz")
    correlations = read_concept_correlations(run_dir.grounding_dir / "concept_morphology.csv")
    if pulses is None:
        infos.append(_unavailable("concepts", "concepts", "Concept cards",
                                  "concept_pulses.npz not available"))
    else:
        infos.extend(plot_concept_card(int(c), pulses, i, correlations, out_dir)
                     for i, c in enumerate(pulses["concepts"]))
    infos.extend(_example_window_figures(run_dir, out_dir))
    return infos



def write_figure_index(run_dir: RunDir, infos: list[FigureInfo]) -> None:
    io.write_json(run_dir.figure_index, {"figures": [info.to_json() for info in infos]})


def read_figure_index(run_dir: RunDir) -> list[FigureInfo]:
    """The figures stage's index (required by the report: run `stsae figures` first)."""
    path = run_dir.figure_index
    data = read_optional_json(path)
    if data is None:
        raise InputDataError(f"{path}: missing (run `stsae figures` first)")
    try:
        infos = [FigureInfo.from_json(entry) for entry in data["figures"]]
    except (KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: malformed figure entry ({exc})") from None
    for info in infos:
        if not (isinstance(info.name, str) and _BARE_NAME.fullmatch(info.name)):
            raise InputDataError(f"{path}: figure name {info.name!r} is not a bare file name (letters, digits, "
                                 "'_', '-', '.'); the report embeds only files inside figures/")
    return infos
