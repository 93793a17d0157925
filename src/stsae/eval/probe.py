"""Patient-grouped linear probes: how much of each label / planted factor do the concepts carry?

Probes are cross-validated with `GroupKFold` on patient_id, so a probe is never tested on a patient it
was trained on (the folds are checked). Out-of-fold predictions are pooled and scored once:
continuous factors by R² (standardised features + RidgeCV over a fixed alpha grid), binary labels by
AUROC (`classification_probe`: standardised features + L2 logistic regression). The same probes on the
raw 512-d embeddings give the reference (`raw_value` on the leaderboard).

Single-concept recovery: for each factor, the concept whose activation has the largest |Pearson r|
with it (constant concepts have no r and are skipped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

log = logging.getLogger(__name__)

CONTINUOUS_FACTORS = ("age", "vascular_age", "hr_bpm", "resp_rate", "reflection_time", "aix", "notch_depth")
BINARY_FACTORS = ("htn", "t2d", "sex")
RIDGE_ALPHAS = tuple(np.logspace(-3, 4, 8))


@dataclass
class ProbeScore:
    """metric: "r2" | "auroc"; value None when skipped, with the reason."""

    metric: str
    value: float | None
    reason: str | None = None


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (train_idx, test_idx) with at most n_folds folds; no group is on both sides.

    Raises ValueError with fewer than two groups. The disjointness is asserted, not assumed.
    """
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"grouped cross-validation needs >= 2 patients, got {len(unique)}")
    splitter = GroupKFold(n_splits=min(n_folds, len(unique)))
    folds = list(splitter.split(np.zeros(len(groups)), groups=groups))
    for train_idx, test_idx in folds:
        if np.intersect1d(groups[train_idx], groups[test_idx]).size:
            raise AssertionError("a patient appears in both the training and test side of a probe fold")
    return folds


def binary_labels(values: pd.Series) -> np.ndarray:
    """float[N] 0/1/NaN: sex "F" -> 1, "M" -> 0; numeric 0/1 kept; anything else NaN."""
    if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype | pd.StringDtype):
        mapped = values.map({"F": 1.0, "M": 0.0, 0: 0.0, 1: 1.0})
        return mapped.to_numpy(dtype=float)
    out = values.to_numpy(dtype=float)
    return np.where(np.isin(out, (0.0, 1.0)), out, np.nan)


def regression_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> ProbeScore:
    """Out-of-fold R² of a ridge probe: x float[N, P], y float[N] (NaN rows dropped), groups[N]."""
    keep = np.isfinite(y)
    x, y, groups = x[keep], y[keep], groups[keep]
    if len(np.unique(groups)) < 2:
        return ProbeScore("r2", None, "fewer than two patients with this label")
    if np.ptp(y) == 0:
        return ProbeScore("r2", None, "label is constant on the evaluation split")
    pred = np.empty_like(y)
    for train_idx, test_idx in grouped_folds(groups, n_folds):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        pred[test_idx] = model.fit(x[train_idx], y[train_idx]).predict(x[test_idx])
    return ProbeScore("r2", float(r2_score(y, pred)))


def classification_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> ProbeScore:
    """Out-of-fold AUROC of a logistic probe: x float[N, P], y float[N] in {0, 1} (NaN rows dropped).

    One class only -> skipped (value None) with the reason. A training fold that happens to hold one
    class predicts that fold's base rate instead of fitting.
    """
    keep = np.isfinite(y)
    x, y, groups = x[keep], y[keep].astype(int), groups[keep]
    if len(np.unique(y)) < 2:
        return ProbeScore("auroc", None, "only one class present on the evaluation split")
    if len(np.unique(groups)) < 2:
        return ProbeScore("auroc", None, "fewer than two patients with this label")
    prob = np.empty(len(y))
    for train_idx, test_idx in grouped_folds(groups, n_folds):
        if len(np.unique(y[train_idx])) < 2:
            prob[test_idx] = y[train_idx].mean()
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        prob[test_idx] = model.fit(x[train_idx], y[train_idx]).predict_proba(x[test_idx])[:, 1]
    return ProbeScore("auroc", float(roc_auc_score(y, prob)))


def available_factors(meta: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """factor -> (metric, float[N] values) for every known factor column with at least one value."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    for name in CONTINUOUS_FACTORS:
        if name in meta.columns:
            values = pd.to_numeric(meta[name], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(values).any():
                found[name] = ("r2", values)
    for name in BINARY_FACTORS:
        if name in meta.columns:
            values = binary_labels(meta[name])
            if np.isfinite(values).any():
                found[name] = ("auroc", values)
    return found


def probe_all(x: np.ndarray, factors: dict[str, tuple[str, np.ndarray]], groups: np.ndarray,
              n_folds: int) -> dict[str, ProbeScore]:
    """Run the right probe for every factor; skipped ones are logged with their reason."""
    scores: dict[str, ProbeScore] = {}
    for name, (metric, values) in factors.items():
        probe = regression_probe if metric == "r2" else classification_probe
        scores[name] = probe(x, values, groups, n_folds)
        if scores[name].value is None:
            log.info("probe %s skipped: %s", name, scores[name].reason)
    return scores


@dataclass
class SingleConcept:
    concept: int | None
    abs_r: float | None


def single_concept_recovery(codes: np.ndarray, y: np.ndarray) -> SingleConcept:
    """Best |Pearson r| of any one concept with y: codes float[N, K], y float[N] (NaN rows dropped)."""
    keep = np.isfinite(y)
    x, target = codes[keep].astype(np.float64), y[keep].astype(np.float64)
    if len(target) < 3 or np.ptp(target) == 0:
        return SingleConcept(None, None)
    mean = x.mean(axis=0)
    xc, yc = x - mean, target - target.mean()
    spread = np.sqrt((xc * xc).sum(axis=0))
    constant = spread <= 1e-8 * np.abs(mean) * np.sqrt(len(target)) + 1e-300
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(constant, np.nan, (xc.T @ yc) / (spread * np.sqrt((yc * yc).sum())))
    if not np.isfinite(r).any():
        return SingleConcept(None, None)
    best = int(np.nanargmax(np.abs(r)))
    return SingleConcept(best, float(min(abs(r[best]), 1.0)))
