"""Example-window figures: what the preprocessed windows look like across age, and what QC rejects.

Why: a reader should see the data before trusting anything learned from it — one clean window per
age decile shows the age-related pulse-shape change; one window per rejection reason shows QC works.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from stsae.data.windowing import QC_REASONS
from stsae.utils.io import atomic_path

_SHOW_S = 5.0  # seconds of each 10 s window drawn, so individual pulses stay readable


def _save(fig: Figure, path: Path) -> None:
    """Write `path` as PNG and its sibling .svg, both atomically and reproducibly (no creation date or
    random SVG ids, so the same run gives the same bytes)."""
    for target in (path.with_suffix(".png"), path.with_suffix(".svg")):
        metadata = {"Software": None} if target.suffix == ".png" else {"Date": None}
        with atomic_path(target) as tmp, matplotlib.rc_context({"svg.hashsalt": "stsae"}):
            fig.savefig(tmp, format=target.suffix[1:], dpi=110, bbox_inches="tight", metadata=metadata)
    plt.close(fig)


def _stacked(windows: np.ndarray, rows: list[int], labels: list[str], title: str, fs: float) -> Figure:
    n_show = min(windows.shape[1], round(_SHOW_S * fs))
    t = np.arange(n_show) / fs
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(8, 1.1 * max(1, len(rows)) + 0.6),
                             sharex=True, squeeze=False, layout="constrained")
    for ax, row, label in zip(axes[:, 0], rows, labels, strict=False):
        ax.plot(t, np.asarray(windows[row, :n_show], dtype=float), lw=0.9, color="tab:blue")
        ax.set_yticks([])
        ax.text(1.01, 0.5, label, transform=ax.transAxes, va="center", fontsize=8)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no windows to show", ha="center", va="center")
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_windows_by_age_decile(windows: np.ndarray, meta: pd.DataFrame, path: Path,
                               qc: pd.DataFrame | None = None, fs: float = 125.0) -> None:
    """One clean window per age decile, youngest on top, labelled with age and vascular age.

    windows: float32[N, L] (memmap fine); meta: N rows with age (and vascular_age when synthetic);
    qc: optional N rows with qc_pass (only passing windows are drawn). Writes path .png and .svg.
    """
    usable = meta["age"].notna().to_numpy()
    if qc is not None:
        usable = usable & qc["qc_pass"].to_numpy(dtype=bool)
    ages = meta["age"].to_numpy(dtype=float)
    rows, labels = [], []
    if usable.any():
        edges = np.quantile(ages[usable], np.linspace(0, 1, 11))
        decile = np.clip(np.searchsorted(edges, ages, side="right") - 1, 0, 9)
        for d in range(10):
            candidates = np.flatnonzero(usable & (decile == d))
            if candidates.size == 0:
                continue
            row = int(candidates[candidates.size // 2])
            label = f"age {ages[row]:.0f}"
            if "vascular_age" in meta.columns and np.isfinite(meta["vascular_age"].iloc[row]):
                label += f"\nvascular {meta['vascular_age'].iloc[row]:.0f}"
            rows.append(row)
            labels.append(label)
    _save(_stacked(windows, rows, labels, "Example clean windows by age decile", fs), path)


def plot_qc_rejections(windows: np.ndarray, meta: pd.DataFrame, qc: pd.DataFrame, path: Path,
                       fs: float = 125.0) -> None:
    """One example window per QC rejection reason present, labelled with reason (and planted artifact).

    windows: float32[N, L] preprocessed windows; meta, qc: N rows (qc has qc_reason). Writes .png/.svg.
    """
    reasons = qc["qc_reason"].to_numpy()
    rows, labels = [], []
    for reason in QC_REASONS:
        hits = np.flatnonzero(reasons == reason)
        if hits.size == 0:
            continue
        row = int(hits[0])
        label = reason + (f"\n(planted: {meta['artifact'].iloc[row]})" if "artifact" in meta.columns else "")
        rows.append(row)
        labels.append(f"{label}\nn={hits.size}")
    _save(_stacked(windows, rows, labels, "Example windows rejected by QC (preprocessed)", fs), path)
