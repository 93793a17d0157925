"""Stability selection (M&B 2010) recovers a planted sparse support and keeps false selections within its bound."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LassoCV

from stsae.aging.stability_selection import pfer_q_max, stability_selection

SUPPORT = (0, 1, 2, 3)
SEEDS = range(6)


def planted_problem(seed: int, n: int = 300, p: int = 60, proxy_r: float = 0.7,
                    signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """y depends on features 0-3; features 4-11 are nuisance proxies (r = proxy_r, two per true feature)."""
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, p))
    for j in SUPPORT:
        for proxy in (4 + 2 * j, 5 + 2 * j):
            x[:, proxy] = proxy_r * x[:, j] + np.sqrt(1 - proxy_r**2) * x[:, proxy]
    y = signal * x[:, list(SUPPORT)] @ np.array([1.0, -1.0, 0.8, 0.8]) + gen.standard_normal(n)
    return (x - x.mean(axis=0)) / x.std(axis=0), y


def select(x: np.ndarray, y: np.ndarray, seed: int, rounds: int = 30):
    return stability_selection(x, y, np.arange(len(y)), pi_thr=0.9, pfer=1.0, weakness=0.5, rounds=rounds,
                               n_lambdas=60, rng=np.random.default_rng(seed))


def test_recovers_the_planted_support_and_respects_the_pfer_bound_where_cv_lasso_does_not() -> None:
    false_new, false_cv, bounds = [], [], []
    for seed in SEEDS:
        x, y = planted_problem(seed)
        result = select(x, y, seed)
        assert set(SUPPORT) <= set(result.selected.tolist()), f"seed {seed}: {result.selected}"
        false_new.append(len(set(result.selected.tolist()) - set(SUPPORT)))
        bounds.append(result.pfer_bound)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            cv_coef = LassoCV(cv=5).fit(x, y).coef_
        false_cv.append(int(np.count_nonzero(np.delete(cv_coef, SUPPORT))))
    assert np.mean(false_new) <= np.mean(bounds)
    assert np.mean(false_cv) > np.mean(bounds)  # the single cross-validated lasso over-selects proxies


def test_false_selections_on_pure_noise_stay_within_the_bound_on_average() -> None:
    false, bounds = [], []
    for seed in SEEDS:
        x, _ = planted_problem(seed)
        y = np.random.default_rng(100 + seed).standard_normal(len(x))
        result = select(x, y, seed)
        false.append(len(result.selected))
        bounds.append(result.pfer_bound)
    assert np.mean(false) <= np.mean(bounds)


def test_q_is_the_largest_the_pfer_target_allows_and_the_path_never_exceeds_it() -> None:
    assert pfer_q_max(1.0, 0.9, 60) == 6  # sqrt(1 * 0.8 * 60) = 6.9
    x, y = planted_problem(0)
    result = select(x, y, 0)
    assert result.q <= result.q_max == 6
    assert result.pfer_bound == pytest.approx(result.q**2 / (0.8 * 60))
    assert np.all(np.diff(result.lambdas) < 0)


def test_threshold_at_or_below_one_half_has_no_bound() -> None:
    with pytest.raises(ValueError, match="pi_thr"):
        pfer_q_max(1.0, 0.5, 60)


def test_frequency_is_a_fraction_per_feature_and_selected_reach_the_threshold() -> None:
    x, y = planted_problem(1)
    result = select(x, y, 1, rounds=20)
    assert result.frequency.shape == (x.shape[1],)
    assert np.all((result.frequency >= 0) & (result.frequency <= 1))
    assert np.all(result.frequency[result.selected] >= 0.9)


def test_same_seed_gives_same_frequencies() -> None:
    x, y = planted_problem(2)
    runs = [select(x, y, 7, rounds=10).frequency for _ in range(2)]
    assert np.array_equal(*runs)


def test_fewer_than_four_patient_groups_is_an_error() -> None:
    x, y = planted_problem(3, n=40)
    with pytest.raises(ValueError, match="at least 4 groups"):
        stability_selection(x, y, np.repeat([0, 1, 2], [10, 10, 20]), pi_thr=0.9, pfer=1.0, weakness=0.5,
                            rounds=2, n_lambdas=5, rng=np.random.default_rng(0))
