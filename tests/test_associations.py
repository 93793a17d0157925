"""HTN/T2D logistic associations with Δage: planted odds ratios are recovered; unfit cases are skipped."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsae.aging.associations import condition_associations, logistic_association


def delta_table(n: int = 3000, or_per_5y: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """Test patients whose HTN log-odds rise by log(or_per_5y) per 5 years of Δage (age/sex also matter)."""
    gen = np.random.default_rng(seed)
    delta = gen.normal(0, 6, n)
    age = gen.uniform(20, 85, n)
    male = gen.integers(0, 2, n)
    logit = -0.5 + np.log(or_per_5y) / 5 * delta + 0.02 * (age - 50) + 0.3 * male
    htn = (gen.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(n)],
            "split": "test",
            "delta_age": delta,
            "age": age,
            "sex": np.where(male == 1, "M", "F"),
            "htn": htn,
            "t2d": gen.integers(0, 2, n).astype(float),
        }
    )


def test_planted_odds_ratio_is_recovered_with_ci_above_one() -> None:
    result = logistic_association(delta_table(), "htn", min_events=10)
    assert result["ci_low"] > 1
    assert result["ci_low"] < 2.0 < result["ci_high"]
    assert result["or_per_5y"] == pytest.approx(2.0, rel=0.15)
    assert result["p"] < 1e-6
    assert result["n"] == 3000


def test_planted_odds_ratio_per_sd_is_recovered() -> None:
    """Δage has SD 6, so the planted OR 2 per 5 y is 2^(6/5) ≈ 2.30 per SD."""
    result = logistic_association(delta_table(), "htn", min_events=10)
    assert result["delta_age_sd"] == pytest.approx(6.0, rel=0.05)
    assert result["or_per_sd"] == pytest.approx(2.0 ** (6 / 5), rel=0.15)
    assert result["or_per_sd_ci_low"] < 2.0 ** (6 / 5) < result["or_per_sd_ci_high"]


def test_or_per_sd_ignores_the_scale_of_delta_age_where_or_per_5y_does_not() -> None:
    """Inverting a bias-correction slope of 0.5 doubles every Δage: the same predictor, the same risk."""
    table = delta_table()
    inflated = table.assign(delta_age=2.0 * table["delta_age"])
    base, scaled = (logistic_association(t, "htn", min_events=10) for t in (table, inflated))
    assert scaled["or_per_sd"] == pytest.approx(base["or_per_sd"])
    assert scaled["or_per_sd_ci_low"] == pytest.approx(base["or_per_sd_ci_low"])
    assert scaled["or_per_5y"] == pytest.approx(np.sqrt(base["or_per_5y"]))


def test_unrelated_condition_has_ci_covering_one() -> None:
    result = logistic_association(delta_table(), "t2d", min_events=10)
    assert result["ci_low"] < 1 < result["ci_high"]


def test_all_one_class_is_skipped_with_reason() -> None:
    table = delta_table(n=200).assign(htn=1.0)
    result = logistic_association(table, "htn", min_events=10)
    assert set(result) == {"skipped"}
    assert "0 non-cases" in result["skipped"]


def test_too_few_events_is_skipped_naming_the_config_key() -> None:
    table = delta_table(n=200).assign(t2d=0.0)
    table.loc[:4, "t2d"] = 1.0
    assert "aging.min_events" in logistic_association(table, "t2d", min_events=10)["skipped"]


def test_perfect_separation_is_skipped_not_raised() -> None:
    table = delta_table(n=200)
    table["htn"] = (table["delta_age"] > 0).astype(float)
    assert "could not be fitted" in logistic_association(table, "htn", min_events=10)["skipped"]


def test_rows_with_missing_label_or_sex_are_left_out() -> None:
    table = delta_table(n=600)
    table.loc[:99, "htn"] = np.nan
    table.loc[100:149, "sex"] = None
    assert logistic_association(table, "htn", min_events=10)["n"] == 450


def test_condition_associations_leave_out_train_patients() -> None:
    table = pd.concat([delta_table(n=500), delta_table(n=300, seed=1).assign(split="train")])
    result = condition_associations(table, min_events=10)
    assert set(result) == {"htn", "t2d"}
    assert result["htn"]["n"] == 500

def test_validation_and_test_patients_enter_the_associations() -> None:
    table = pd.concat([delta_table(n=500), delta_table(n=300, seed=1).assign(split="val"),
                       delta_table(n=200, seed=2).assign(split="train")])
    assert condition_associations(table, min_events=10)["htn"]["n"] == 800
