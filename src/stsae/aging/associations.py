"""Do people whose vessels look older than their age have more hypertension and diabetes?

Logistic regression of each condition on bias-corrected Δage, adjusted for chronological age and sex,
reported as the odds ratio per 5 years and per SD of Δage, each with its 95 % Wald CI, and p. Per SD is
the scale-free one: inverting the bias correction divides by its slope, so Δage of a weak predictor is
inflated by 1/slope and "5 years" of it means less; per SD compares predictors on equal footing.
Run on patients the age model never saw (ASSOCIATION_SPLITS), so Δage there is out of sample.
An analysis that cannot be fitted (one class only, too few events, separation, no convergence) is
returned as {"skipped": reason}, never as a crash or a made-up number.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from stsae.aging.logit import OK, logit_per_column

log = logging.getLogger(__name__)

CONDITIONS = ("htn", "t2d")
PER_YEARS = 5.0


def adjusted_design(table: pd.DataFrame, label: str, *,
                    min_events: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | str:
    """(rows bool[P], y float64[n], adjustments float64[n, q]) of the patients a `label` model can use, or
    why none can be fitted. Rows need age, sex ("M"/"F") and `label`; adjustments are age and male (sex
    enters only if it varies); each class needs at least `min_events` patients.
    """
    rows = table[["age", "sex", label]].notna().all(axis=1).to_numpy() & table["sex"].isin(["M", "F"]).to_numpy()
    y = table.loc[rows, label].to_numpy(dtype=np.float64)
    n, events = len(y), int(y.sum())
    if min(events, n - events) < min_events:
        return (f"{label}: {events} cases and {n - events} non-cases among {n} patients; "
                f"need at least {min_events} of each (aging.min_events)")
    age = table.loc[rows, "age"].to_numpy(dtype=np.float64)
    male = (table.loc[rows, "sex"] == "M").to_numpy(dtype=np.float64)
    adjustments = np.column_stack([age, male]) if 0 < male.sum() < n else age[:, None]
    return rows, y, adjustments


def logistic_association(delta: pd.DataFrame, label: str, *, min_events: int) -> dict[str, Any]:
    """OR of `label` (0/1) per PER_YEARS (5) years and per SD of delta_age, adjusted for age and sex.

    delta: one row per patient with delta_age, age, sex ("M"/"F"), `label`; rows with a missing value
    are left out (sex enters only if it varies). Returns {"or_per_5y", "ci_low", "ci_high", "or_per_sd",
    "or_per_sd_ci_low", "or_per_sd_ci_high", "delta_age_sd", "p", "n"} (the SD is that of the analysed
    patients' Δage) or {"skipped": reason}. The fit is `logit_per_column` with one column (statsmodels'
    Newton iteration, tests/test_logit.py).
    """
    delta = delta[delta["delta_age"].notna()]
    design = adjusted_design(delta, label, min_events=min_events)
    if isinstance(design, str):
        return {"skipped": design}
    rows, y, adjustments = design
    values = delta.loc[rows, "delta_age"].to_numpy(dtype=np.float64)
    fit = logit_per_column(values[:, None], adjustments, y)
    if fit.status[0] != OK:
        return {"skipped": f"{label}: logistic regression could not be fitted ({fit.status[0]})"}
    beta, low, high, p = (float(v[0]) for v in fit.wald())
    sd = float(np.std(values, ddof=1))
    with np.errstate(over="ignore"):
        return {
            "or_per_5y": float(np.exp(PER_YEARS * beta)),
            "ci_low": float(np.exp(PER_YEARS * low)),
            "ci_high": float(np.exp(PER_YEARS * high)),
            "or_per_sd": float(np.exp(sd * beta)),
            "or_per_sd_ci_low": float(np.exp(sd * low)),
            "or_per_sd_ci_high": float(np.exp(sd * high)),
            "delta_age_sd": sd,
            "p": p,
            "n": len(y),
        }


ASSOCIATION_SPLITS = ("val", "test")
"""Patients the age model never saw. The bias correction may be fitted on validation, but it uses only
(age, predicted age), never HTN/T2D, and the logistic models adjust for age, so validation patients add
power (and events) without leaking the outcome."""


def condition_associations(delta: pd.DataFrame, *, min_events: int,
                           splits: tuple[str, ...] = ASSOCIATION_SPLITS) -> dict[str, dict[str, Any]]:
    """{"htn": ..., "t2d": ...} on the patients of `splits` in a delta_age table (split column)."""
    held_out = delta[delta["split"].isin(splits)]
    result = {}
    for label in CONDITIONS:
        result[label] = logistic_association(held_out, label, min_events=min_events)
        if "skipped" in result[label]:
            log.warning("association skipped: %s", result[label]["skipped"])
    return result
