"""Stability selection (Meinshausen & Bühlmann 2010): randomised lasso paths on half-samples, PFER-bounded.

Why: with many correlated concepts the lasso's single selected set is arbitrary, and cross-validated
lasso over-selects. Stability selection keeps a concept whose maximum selection probability over a λ path
reaches π_thr, and Theorem 1 of the paper bounds the expected number of false selections:
E[V] ≤ q² / ((2π_thr − 1) p), with q the mean number of concepts any λ of the path selects on a
half-sample. We fix the tolerated bound (PFER target) and π_thr, solve for the largest q it allows, and
cut the λ path where the mean selected set would grow past q.

Randomised lasso: every half-sample draws a penalty weight W_k ~ U[weakness, 1] per feature; scaling
column k by W_k before the lasso gives it the penalty λ|β_k| / W_k on the original scale. Half-samples
are drawn over patients (groups), never over windows, so a patient never sits on both sides of a split.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import lasso_path

LAMBDA_RATIO = 1e-3
"""The λ path runs from the smallest λ that selects nothing on all rows down to this fraction of it."""


@dataclass(frozen=True)
class StabilityResult:
    """The selected features and everything the PFER bound rests on.

    frequency: float64[K] max over the used λ path of the fraction of half-samples selecting the feature;
    selected: int64[S] features with frequency ≥ pi_thr; q: mean size over half-samples of the union of
    the sets selected along the used path; q_max: the largest q the PFER target allows;
    pfer_bound: q² / ((2 pi_thr − 1) K), the bound on E[false selections]; lambdas: float64[m] the used
    path (standardised-feature units; empty when even the largest λ selects more than q_max).
    """

    frequency: np.ndarray
    selected: np.ndarray
    q: float
    q_max: int
    pfer_bound: float
    pi_thr: float
    lambdas: np.ndarray

    def record(self) -> dict[str, object]:
        """JSON-ready summary for age_model.json."""
        return {
            "selected": self.selected.tolist(),
            "frequency": self.frequency.tolist(),
            "pi_thr": self.pi_thr,
            "q": self.q,
            "q_max": self.q_max,
            "pfer_bound": self.pfer_bound,
            "lambda_max": float(self.lambdas[0]) if len(self.lambdas) else None,
            "lambda_min": float(self.lambdas[-1]) if len(self.lambdas) else None,
        }


def pfer_q_max(pfer: float, pi_thr: float, n_features: int) -> int:
    """Largest integer q with q² / ((2 pi_thr − 1) n_features) ≤ pfer (M&B Theorem 1 solved for q)."""
    if not 0.5 < pi_thr <= 1:
        raise ValueError(f"pi_thr must be in (0.5, 1] for the PFER bound, got {pi_thr}")
    return max(1, math.floor(math.sqrt(pfer * (2 * pi_thr - 1) * n_features)))


def _lambda_grid(x: np.ndarray, y: np.ndarray, n_lambdas: int) -> np.ndarray:
    """float64[n] decreasing λ from the all-zero point of the full data (sklearn's alpha scaling)."""
    lambda_max = float(np.abs(x.T @ (y - y.mean())).max()) / len(y)
    if lambda_max <= 0:
        raise ValueError("stability selection: y is constant or x has no variance")
    return np.geomspace(lambda_max, lambda_max * LAMBDA_RATIO, n_lambdas)


def _half_sample_paths(x: np.ndarray, y: np.ndarray, groups: np.ndarray, lambdas: np.ndarray, *,
                       rounds: int, weakness: float, rng: np.random.Generator) -> np.ndarray:
    """bool[rounds, n_lambdas, K]: which features the randomised lasso selects at each λ of each half-sample."""
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(unique) < 4:
        raise ValueError(f"stability selection needs at least 4 groups, got {len(unique)}")
    selected = np.zeros((rounds, len(lambdas), x.shape[1]), dtype=bool)
    for b in range(rounds):
        chosen = np.zeros(len(unique), dtype=bool)
        chosen[rng.choice(len(unique), size=len(unique) // 2, replace=False)] = True
        rows = chosen[inverse]
        weights = rng.uniform(weakness, 1.0, size=x.shape[1])
        xb = (x[rows] - x[rows].mean(axis=0)) * weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            _, coefs, _ = lasso_path(xb, y[rows] - y[rows].mean(), alphas=lambdas)
        selected[b] = (coefs != 0).T
    return selected


def stability_selection(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    pi_thr: float,
    pfer: float,
    weakness: float,
    rounds: int,
    n_lambdas: int,
    rng: np.random.Generator,
) -> StabilityResult:
    """Randomised-lasso stability selection with the path cut so that E[false selections] ≤ pfer.

    x: float64[P, K] standardised features; y: float64[P]; groups: [P] patient ids (rows of one group are
    drawn together). pi_thr in (0.5, 1]; pfer > 0 the tolerated expected number of false selections;
    weakness in (0, 1] the smallest random penalty weight; rng: the seeded generator of this sub-task.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(groups) != x.shape[0]:
        raise ValueError(f"x {x.shape}, y {y.shape} and groups ({len(groups)}) must share rows")
    n_features = x.shape[1]
    q_max = pfer_q_max(pfer, pi_thr, n_features)
    lambdas = _lambda_grid(x, y, n_lambdas)
    paths = _half_sample_paths(x, y, groups, lambdas, rounds=rounds, weakness=weakness, rng=rng)
    union_size = np.logical_or.accumulate(paths, axis=1).sum(axis=2).mean(axis=0)  # [n_lambdas]
    m = int(np.searchsorted(union_size, q_max, side="right"))  # union_size is non-decreasing along λ
    frequency = paths[:, :m].mean(axis=0).max(axis=0) if m else np.zeros(n_features)
    q = float(union_size[m - 1]) if m else 0.0
    return StabilityResult(
        frequency=frequency,
        selected=np.flatnonzero(frequency >= pi_thr),
        q=q,
        q_max=q_max,
        pfer_bound=q**2 / ((2 * pi_thr - 1) * n_features),
        pi_thr=pi_thr,
        lambdas=lambdas[:m],
    )
