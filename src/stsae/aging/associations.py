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
import warnings
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import (
    ConvergenceWarning,
    PerfectSeparationError,
    PerfectSeparationWarning,
)

log = logging.getLogger(__name__)

CONDITIONS = ("htn", "t2d")
PER_YEARS = 5.0


def logistic_association(delta: pd.DataFrame, label: str, *, min_events: int) -> dict[str, Any]:
    """OR of `label` (0/1) per PER_YEARS (5) years and per SD of delta_age, adjusted for age and sex.

    delta: one row per patient with delta_age, age, sex ("M"/"F"), `label`; rows with a missing value
    are left out (sex enters only if it varies). Returns {"or_per_5y", "ci_low", "ci_high", "or_per_sd",
    "or_per_sd_ci_low", "or_per_sd_ci_high", "delta_age_sd", "p", "n"} (the SD is that of the analysed
    patients' Δage) or {"skipped": reason}.
    """
    frame = delta[["delta_age", "age", "sex", label]].dropna()
    frame = frame[frame["sex"].isin(["M", "F"])]
    n = len(frame)
    y = frame[label].to_numpy(dtype=np.float64)
    events = int(y.sum())
    if min(events, n - events) < min_events:
        return {
            "skipped": f"{label}: {events} cases and {n - events} non-cases among {n} patients; "
            f"need at least {min_events} of each (aging.min_events)"
        }
    covariates = (
        frame[["delta_age", "age"]].astype(np.float64).assign(male=(frame["sex"] == "M").astype(float))
    )
    if covariates["male"].nunique() < 2:
        covariates = covariates.drop(columns="male")
    design = sm.add_constant(covariates.to_numpy(), has_constant="add")
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            fit = sm.Logit(y, design).fit(disp=0, maxiter=200)
        except (
            PerfectSeparationError,
            PerfectSeparationWarning,
            ConvergenceWarning,
            np.linalg.LinAlgError,
        ) as exc:
            return {"skipped": f"{label}: logistic regression could not be fitted ({type(exc).__name__})"}
    beta = float(fit.params[1])
    low, high = (float(v) for v in fit.conf_int(alpha=0.05)[1])
    sd = float(frame["delta_age"].std())
    return {
        "or_per_5y": float(np.exp(PER_YEARS * beta)),
        "ci_low": float(np.exp(PER_YEARS * low)),
        "ci_high": float(np.exp(PER_YEARS * high)),
        "or_per_sd": float(np.exp(sd * beta)),
        "or_per_sd_ci_low": float(np.exp(sd * low)),
        "or_per_sd_ci_high": float(np.exp(sd * high)),
        "delta_age_sd": sd,
        "p": float(fit.pvalues[1]),
        "n": n,
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
