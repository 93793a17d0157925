"""Stability selection (Meinshausen & Bühlmann 2010): keep concepts an elastic net picks on most half-samples.

Why: with many correlated concepts the lasso's single selected set is arbitrary; a concept chosen in most
refits on random halves of the patients is one whose link to age does not hinge on a few people.
Half-samples are drawn over patients (groups), never over windows, so one patient never sits on both
sides of a resample.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet


@dataclass(frozen=True)
class StabilityResult:
    """frequency: float64[K] fraction of half-sample fits with a nonzero coefficient; selected: int64[S]."""

    frequency: np.ndarray
    selected: np.ndarray


def stability_selection(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    alpha: float,
    l1_ratio: float,
    rounds: int,
    threshold: float,
    rng: np.random.Generator,
) -> StabilityResult:
    """Refit an elastic net on `rounds` random halves of the groups; keep features with frequency ≥ threshold.

    x: float64[P, K] standardised features; y: float64[P]; groups: [P] patient ids (rows of one group are
    drawn together). alpha / l1_ratio: the regularisation to refit with (usually ElasticNetCV's choice on
    all rows). rng: the seeded generator of this sub-task.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],) or len(groups) != x.shape[0]:
        raise ValueError(f"x {x.shape}, y {y.shape} and groups ({len(groups)}) must share rows")
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if len(unique) < 4:
        raise ValueError(f"stability selection needs at least 4 groups, got {len(unique)}")
    half = len(unique) // 2
    counts = np.zeros(x.shape[1], dtype=np.int64)
    model = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, max_iter=5000)
    for _ in range(rounds):
        chosen = np.zeros(len(unique), dtype=bool)
        chosen[rng.choice(len(unique), size=half, replace=False)] = True
        rows = chosen[inverse]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[rows], y[rows])
        counts += model.coef_ != 0
    frequency = counts / rounds
    return StabilityResult(frequency=frequency, selected=np.flatnonzero(frequency >= threshold))
