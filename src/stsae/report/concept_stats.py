"""Per-concept numbers for the report's concept dashboard that no upstream stage writes.

The evaluate stage reports reliability per *model* (one lag-1, one consistency, one stability number);
a dashboard card needs them per *concept*, and the effect of each concept on age and phenotypes. All
functions here are pure (arrays in, arrays out) so each can be checked against a planted truth.

Definitions (K concepts, N windows):
- within-record lag-1 of concept c = Pearson r of (a_t, a_t+1) over adjacent windows of one record minus
  r over non-adjacent pairs (gap ≥ 2) of the same record, both on within-record-demeaned codes. Demeaning
  removes between-record level differences (most of the code variance, README "Measured"); subtracting the
  non-adjacent r removes the small-record bias that demeaning itself introduces (≈ −1/(n−1)).
  Null: 0 for a concept that carries no temporal structure beyond its record's level.
- consistency of c = Jaccard |A ∩ B| / |A ∪ B| of the windows where c fires on z and on z_aug.
  Null: the Jaccard of two independent firing sets of the same densities, p²/(2p − p²).
- matched cosine of c = mean over other seeds of the cosine of atom c with its Hungarian match.
- contribution of c to a patient's predicted age = coef_c · (clip(x_pc) − mean_c) / scale_c in years, with
  the frozen age model's standardisation and train range (`stsae.aging.age_pred.AgePredictor.contributions`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from stsae.aging.associations import adjusted_design
from stsae.aging.logit import OK, logit_per_column
from stsae.eval.stability import matched_cosines

# Spearman's Fisher-z standard error is sqrt(1.06 / (n − 3)) (Fieller, Hartley & Pearson 1957).
_SPEARMAN_VAR = 1.06
_Z95 = 1.959963984540054


def _pooled_r(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64[K] Pearson r of columns of x, y: float[P, K]; NaN where a column is constant or P < 3."""
    if x.shape[0] < 3:
        return np.full(x.shape[1], np.nan)
    dx, dy = x - x.mean(axis=0), y - y.mean(axis=0)
    denom = np.sqrt((dx * dx).sum(axis=0) * (dy * dy).sum(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (dx * dy).sum(axis=0) / denom
    return np.where(denom > 1e-12, r, np.nan)


def record_pairs(record_ids: np.ndarray, segment_idx: np.ndarray, rng: np.random.Generator,
                 draws: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(adjacent int64[P, 2], non-adjacent int64[Q, 2]) row pairs within records.

    Adjacent: segment_idx differs by exactly 1. Non-adjacent: `draws` random partners per row from its own
    record, kept when the segments are at least 2 apart (so the set scales with N, not N²).
    """
    order = np.lexsort((segment_idx, record_ids))
    rec, seg = np.asarray(record_ids)[order], np.asarray(segment_idx)[order]
    same = rec[1:] == rec[:-1]
    adjacent = np.flatnonzero(same & (seg[1:] - seg[:-1] == 1))
    adj = np.column_stack([order[adjacent], order[adjacent + 1]])
    _, start, count = np.unique(rec, return_index=True, return_counts=True)
    owner = np.repeat(np.arange(len(start)), count)
    rows = np.tile(np.arange(len(rec)), draws)
    partner = start[owner[rows]] + (rng.random(len(rows)) * count[owner[rows]]).astype(np.int64)
    keep = np.abs(seg[rows] - seg[partner]) >= 2
    non = np.column_stack([order[rows[keep]], order[partner[keep]]])
    return adj.astype(np.int64), non.astype(np.int64)


def within_record_lag1(codes: np.ndarray, record_ids: np.ndarray, segment_idx: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """float64[K] bias-aware within-record lag-1 per concept (module docstring); NaN when undefined.

    codes: float[N, K]; record_ids, segment_idx: [N].
    """
    codes = np.asarray(codes, dtype=np.float64)
    inverse, _ = pd.factorize(np.asarray(record_ids))
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.zeros((len(counts), codes.shape[1]))
    np.add.at(sums, inverse, codes)
    demeaned = codes - (sums / counts[:, None])[inverse]
    adj, non = record_pairs(np.asarray(record_ids), np.asarray(segment_idx), rng)
    r_adj = _pooled_r(demeaned[adj[:, 0]], demeaned[adj[:, 1]])
    r_non = _pooled_r(demeaned[non[:, 0]], demeaned[non[:, 1]])
    return r_adj - r_non


def firing_jaccard(codes: np.ndarray, codes_aug: np.ndarray) -> np.ndarray:
    """float64[K] Jaccard of the windows where each concept fires on z vs z_aug (NaN if it never fires)."""
    a, b = codes > 0, codes_aug > 0
    union = (a | b).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, (a & b).sum(axis=0) / union, np.nan)


def independent_jaccard(density: np.ndarray, density_aug: np.ndarray) -> np.ndarray:
    """The Jaccard two independent firing sets of these densities would have: pq / (p + q − pq)."""
    union = density + density_aug - density * density_aug
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, density * density_aug / union, np.nan)


def matched_atom_cosines(dictionary: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """float64[K]: for each atom of dictionary float[K, D], the mean cosine with its Hungarian match in each
    of `others` (same shape). `matched_cosines` returns pairs in row order, so entry k is atom k."""
    per_seed = [matched_cosines(dictionary, other) for other in others]
    return np.mean(per_seed, axis=0).astype(np.float64)


def activation_odds_ratios(activations: np.ndarray, patients: pd.DataFrame, label: str, *,
                           min_events: int) -> list[dict[str, float | int | str]]:
    """Per concept: OR of `label` per SD of its patient-mean activation, adjusted for age and sex (95 % Wald CI).

    activations: float[P, B], one column per concept, rows aligned with `patients`. The same logistic
    model as the Δage associations (`adjusted_design`), on the activation divided by its SD, fitted for
    all columns in one batched Newton (`logit_per_column`). Each entry is {"or", "lo", "hi", "p", "n"}
    or {"skipped": reason}.
    """
    activations = np.asarray(activations, dtype=np.float64)
    design = adjusted_design(patients, label, min_events=min_events)
    if isinstance(design, str):
        return [{"skipped": design}] * activations.shape[1]
    rows, y, adjustments = design
    values = activations[rows]
    sd = values.std(axis=0, ddof=1)
    varies = sd > 0
    # Fitted per SD: the per-SD OR, its CI and p are scale-free, but a concept firing at 1e-3 has a
    # coefficient ~1e3 whose Newton steps never fall below the absolute tolerance (on the demo 56 of
    # 128 concepts were "not converged" for that reason alone).
    fit = logit_per_column(values[:, varies] / sd[varies], adjustments, y)
    beta, low, high, p = fit.wald()
    out: list[dict[str, float | int | str]] = [{"skipped": "activation constant over patients"}] * len(sd)
    for i, column in enumerate(np.flatnonzero(varies)):
        if fit.status[i] != OK:
            out[column] = {"skipped": f"{label}: logistic regression could not be fitted ({fit.status[i]})"}
            continue
        out[column] = {"or": float(np.exp(beta[i])), "lo": float(np.exp(low[i])), "hi": float(np.exp(high[i])),
                       "p": float(p[i]), "n": len(y)}
    return out


def spearman_ci(rho: float, n: int) -> tuple[float, float]:
    """95 % CI of a Spearman rho over n points (Fisher z, Fieller variance); NaNs when n ≤ 3."""
    if n <= 3 or not np.isfinite(rho):
        return float("nan"), float("nan")
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    half = _Z95 * np.sqrt(_SPEARMAN_VAR / (n - 3))
    return float(np.tanh(z - half)), float(np.tanh(z + half))
