"""Lag-1 autocorrelation of concept activations: definition, constant codes, streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.eval.temporal import Lag1Autocorrelation, lag1_autocorrelation


def _pairs(n: int) -> np.ndarray:
    return np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)


def test_constant_code_is_undefined_with_a_reason() -> None:
    codes = np.full((50, 4), 0.7, dtype=np.float32)
    result = lag1_autocorrelation(codes, _pairs(50))
    assert result.value is None and result.unweighted is None
    assert result.n_defined == 0 and "constant" in result.reason


def test_never_active_concepts_are_left_out_of_the_mean() -> None:
    t = np.arange(200, dtype=np.float64)
    codes = np.zeros((200, 3), dtype=np.float32)
    codes[:, 0] = np.sin(t / 20)  # slow: r close to 1
    result = lag1_autocorrelation(codes, _pairs(200))
    expected = np.corrcoef(codes[:-1, 0], codes[1:, 0])[0, 1]
    assert result.n_defined == 1
    assert result.value == pytest.approx(expected) and result.unweighted == pytest.approx(expected)


def test_rarely_firing_concepts_do_not_drown_the_weighted_lag1() -> None:
    """A sparse code: one slow, always-varying concept and 200 concepts that fire once at random.
    The unweighted mean sinks towards their r ≈ 0; the variance-weighted form stays near the slow
    concept's r because they carry almost no variance."""
    gen = np.random.default_rng(0)
    t = np.arange(2000, dtype=np.float64)
    codes = np.zeros((2000, 201))
    codes[:, 0] = 5.0 * np.sin(t / 30)
    codes[gen.integers(0, 2000, 200), np.arange(1, 201)] = 0.5
    result = lag1_autocorrelation(codes, _pairs(2000))
    assert result.value > 0.9 and result.unweighted < 0.1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_weighted_lag1_is_pooled_covariance_over_pooled_scale(seed: int, k: int) -> None:
    gen = np.random.default_rng(seed)
    codes = gen.standard_normal((120, k)) * gen.uniform(0.1, 5.0, k)
    codes[1:] += 0.5 * codes[:-1]
    x, y = codes[:-1], codes[1:]
    cov = ((x - x.mean(0)) * (y - y.mean(0))).sum(0)
    scale = np.sqrt(((x - x.mean(0)) ** 2).sum(0) * ((y - y.mean(0)) ** 2).sum(0))
    assert lag1_autocorrelation(codes, _pairs(120)).value == pytest.approx(cov.sum() / scale.sum())


def test_white_noise_has_near_zero_lag1() -> None:
    codes = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    assert abs(lag1_autocorrelation(codes, _pairs(5000)).value) < 0.05


def test_no_pairs_is_undefined_with_a_reason() -> None:
    result = Lag1Autocorrelation(3).result()
    assert result.value is None and result.unweighted is None and "no temporal pairs" in result.reason


def test_merging_chunks_equals_one_pass() -> None:
    gen = np.random.default_rng(1)
    x, y = gen.standard_normal((300, 5)) + 4, gen.standard_normal((300, 5)) + 2
    y[:, :2] += x[:, :2]
    acc = Lag1Autocorrelation(5)
    for start in range(0, 300, 37):
        acc.update(x[start:start + 37], y[start:start + 37])
    expected = [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(acc.per_concept(), expected, rtol=1e-9)
