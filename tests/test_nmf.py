"""NMF fit (extrapolated HALS): scikit-learn's objective reached or beaten, planted factors recovered,
the reported objective is the real one, the stopping rule and iteration count are recorded."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning

from stsae.models import nmf
from stsae.models.baselines import ICABaseline, NMFBaseline
from stsae.models.nmf import nmf_hals


def _demo_like_x(n: int = 400, seed: int = 0) -> np.ndarray:
    """float64[n, 512] ≥ 0 shaped like shifted PaPaGei-S embeddings: a large shared offset, a few decaying
    factors, small noise (the ill-conditioned case scikit-learn's coordinate descent crawls on)."""
    gen = np.random.default_rng(seed)
    z = (gen.standard_normal((n, 6)) * np.geomspace(1.0, 0.1, 6)) @ gen.standard_normal((6, 512))
    z += 0.05 * gen.standard_normal((n, 512)) + 10.0 * gen.random(512)
    return z - z.min(axis=0)


def _planted(n: int = 300, rank: int = 4, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exactly rank-`rank` non-negative data with sparse factors (so the factorisation is unique up to
    permutation and scale): W float64[n, rank], H float64[rank, 512]."""
    gen = np.random.default_rng(seed)
    w = gen.random((n, rank)) * (gen.random((n, rank)) < 0.5)
    h = gen.random((rank, 512)) * (gen.random((rank, 512)) < 0.4)
    return w, h


def _matched_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the rows of a and b after the best one-to-one matching."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = a @ b.T
    rows, cols = linear_sum_assignment(-cos)
    return cos[rows, cols]


@pytest.mark.parametrize("rank", [4, 16])
def test_objective_is_at_most_sklearn_coordinate_descent_at_the_same_iteration_cap(rank: int) -> None:
    x = _demo_like_x()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = NMF(rank, init="nndsvda", max_iter=100, random_state=0).fit(x)
    sklearn_objective = 0.5 * est.reconstruction_err_**2
    ours = nmf_hals(x, rank, max_iter=100)
    assert ours.objective <= sklearn_objective
    assert ours.n_iter <= 100


def test_planted_non_negative_factors_are_recovered_up_to_permutation_and_scale() -> None:
    w, h = _planted()
    x = w @ h
    result = nmf_hals(x, 4, max_iter=500, tol=1e-9)
    assert result.objective <= 1e-6 * 0.5 * (x**2).sum()
    assert _matched_cosines(result.h, h).min() > 0.999
    assert _matched_cosines(result.w.T, w.T).min() > 0.999


def test_reported_objective_is_half_the_squared_reconstruction_error() -> None:
    x = _demo_like_x(200)
    result = nmf_hals(x, 8, max_iter=30)
    assert (result.w >= 0).all() and (result.h >= 0).all()
    direct = 0.5 * ((x - result.w @ result.h) ** 2).sum()
    np.testing.assert_allclose(result.objective, direct, rtol=1e-8)
    assert result.objective == result.history[-1]
    assert (np.diff(result.history) <= 0).all()


def test_stopping_rule_is_the_relative_objective_change_over_the_window() -> None:
    x = _demo_like_x(200)
    result = nmf_hals(x, 8, max_iter=1000, tol=1e-3, window=5)
    assert result.converged and result.n_iter < 1000
    history = result.history
    assert history[-6] - history[-1] <= 1e-3 * history[-1]
    assert all(history[i - 5] - history[i] > 1e-3 * history[i] for i in range(5, len(history) - 1))


def test_row_chunks_give_the_same_factorisation(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _demo_like_x(200)
    whole = nmf_hals(x, 6, max_iter=20)
    monkeypatch.setattr(nmf, "CHUNK_ROWS", 64)
    chunked = nmf_hals(x.astype(np.float32), 6, max_iter=20)
    np.testing.assert_allclose(chunked.h, nmf_hals(x.astype(np.float32), 6, max_iter=20).h)
    np.testing.assert_allclose(chunked.h, whole.h, rtol=1e-4, atol=1e-6 * np.abs(whole.h).max())


def test_baseline_json_records_iterations_and_convergence(tmp_path) -> None:
    z = (_demo_like_x(200) + 3.0).astype(np.float32)
    model = NMFBaseline(6, max_iter=400).fit(z)
    model.save(tmp_path / "nmf-n6.safetensors")
    fit = json.loads((tmp_path / "nmf-n6.json").read_text())["fit"]
    assert fit["solver"] == "hals-extrapolated" and fit["converged"] is True
    assert 1 <= fit["n_iter"] < 400 and fit["tol"] == NMFBaseline.TOL and fit["objective"] > 0


def test_hitting_max_iter_is_a_warning_naming_the_config_key(caplog: pytest.LogCaptureFixture) -> None:
    z = (_demo_like_x(200) + 3.0).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="stsae.models.baselines"):
        model = NMFBaseline(6, max_iter=2).fit(z)
    assert model.fit_info_ == {**model.fit_info_, "n_iter": 2, "converged": False}
    assert "baselines.max_iter" in caplog.text


def test_an_ica_fit_stopped_by_its_cap_is_recorded_as_not_converged(tmp_path) -> None:
    gen = np.random.default_rng(0)
    z = (gen.uniform(-1, 1, (400, 4)) @ gen.standard_normal((4, 512))).astype(np.float32)  # independent sources
    capped = ICABaseline(4, max_iter=1).fit(z)
    assert capped.fit_info_ == {"solver": "sklearn-fastica", "n_iter": 1, "converged": False}
    assert ICABaseline(4, max_iter=400).fit(z).fit_info_["converged"] is True
