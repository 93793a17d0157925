"""Batched Newton logistic fits agree with statsmodels per column and report the fits that fail."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import statsmodels.api as sm
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

from stsae.aging.logit import OK, logit_per_column


def _cohort(n: int, columns: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(varying float[n, B], adjustments [age, male], y): y depends on column 0, on age and on sex."""
    generator = np.random.default_rng(seed)
    age = generator.uniform(20, 80, n)
    male = (generator.random(n) < 0.5).astype(float)
    varying = generator.gamma(0.7, size=(n, columns)) * generator.uniform(0.01, 5.0, columns)
    logit = 0.8 * (varying[:, 0] - varying[:, 0].mean()) / varying[:, 0].std() + 0.03 * (age - 50) + 0.4 * male - 0.5
    y = (generator.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return varying, np.column_stack([age, male]), y


def _statsmodels(varying: np.ndarray, adjustments: np.ndarray, y: np.ndarray):
    design = sm.add_constant(np.column_stack([varying, adjustments]), has_constant="add")
    return sm.Logit(y, design).fit(disp=0, maxiter=200)


def test_every_column_matches_statsmodels_coefficients_errors_intervals_and_p() -> None:
    varying, adjustments, y = _cohort(500, 12, seed=0)
    batch = logit_per_column(varying, adjustments, y)
    assert (batch.status == OK).all()
    _, low, high, p = batch.wald()
    for column in range(varying.shape[1]):
        reference = _statsmodels(varying[:, column], adjustments, y)
        np.testing.assert_allclose(batch.coef[column], reference.params, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batch.se[column], reference.bse, rtol=1e-9)
        np.testing.assert_allclose([low[column], high[column]], reference.conf_int(alpha=0.05)[1], rtol=1e-9)
        assert p[column] == pytest.approx(reference.pvalues[1], rel=1e-7, abs=1e-300)
        assert batch.iterations[column] == reference.mle_retvals["iterations"]


def test_the_planted_column_is_found_and_a_pure_noise_column_is_not() -> None:
    varying, adjustments, y = _cohort(2000, 2, seed=1)
    _, low, high, _ = logit_per_column(varying, adjustments, y).wald()
    assert low[0] > 0 and low[1] < 0 < high[1]


def test_a_separating_column_is_reported_as_separation_like_statsmodels_warns() -> None:
    varying, adjustments, y = _cohort(300, 2, seed=2)
    varying[:, 0] = y + 0.01 * np.random.default_rng(0).random(len(y))
    batch = logit_per_column(varying, adjustments, y)
    assert list(batch.status) == ["separation", OK]
    assert np.isnan(batch.coef[0]).all() and np.isnan(batch.se[0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        with pytest.raises(PerfectSeparationWarning):
            _statsmodels(varying[:, 0], adjustments, y)


def test_a_fit_still_moving_at_maxiter_is_reported_as_no_convergence() -> None:
    varying, adjustments, y = _cohort(300, 1, seed=3)
    batch = logit_per_column(varying, adjustments, y, maxiter=2)
    assert list(batch.status) == ["no convergence"] and batch.iterations[0] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning):
            sm.Logit(y, sm.add_constant(np.column_stack([varying, adjustments]))).fit(disp=0, maxiter=2)


def test_a_column_collinear_with_the_adjustments_is_reported_not_fitted() -> None:
    """Rounding noise along the null direction is amplified by the 1e-10 ridge: the fit either wanders
    (no convergence) or stops on a singular information matrix; either way no number comes out."""
    varying, adjustments, y = _cohort(300, 2, seed=4)
    varying[:, 1] = 2.0 * adjustments[:, 0]
    batch = logit_per_column(varying, adjustments, y)
    assert batch.status[0] == OK and batch.status[1] in {"singular", "no convergence"}
    assert np.isnan(batch.coef[1]).all()


def test_chunking_over_columns_changes_no_fit_beyond_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    varying, adjustments, y = _cohort(200, 7, seed=5)
    whole = logit_per_column(varying, adjustments, y)
    monkeypatch.setattr("stsae.aging.logit._MAX_CELLS", 2 * len(y))
    chunked = logit_per_column(varying, adjustments, y)
    np.testing.assert_allclose(chunked.coef, whole.coef, rtol=1e-12)
    np.testing.assert_array_equal(chunked.status, whole.status)
