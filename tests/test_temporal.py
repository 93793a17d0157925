"""Lag-1 autocorrelation of concept activations: definition, constant codes, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from stsae.eval.temporal import Lag1Autocorrelation, lag1_autocorrelation


def _pairs(n: int) -> np.ndarray:
    return np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)


def test_constant_code_is_undefined_with_a_reason() -> None:
    codes = np.full((50, 4), 0.7, dtype=np.float32)
    result = lag1_autocorrelation(codes, _pairs(50))
    assert result.value is None and result.n_defined == 0 and "constant" in result.reason


def test_never_active_concepts_are_left_out_of_the_mean() -> None:
    t = np.arange(200, dtype=np.float64)
    codes = np.zeros((200, 3), dtype=np.float32)
    codes[:, 0] = np.sin(t / 20)  # slow: r close to 1
    result = lag1_autocorrelation(codes, _pairs(200))
    expected = np.corrcoef(codes[:-1, 0], codes[1:, 0])[0, 1]
    assert result.n_defined == 1 and result.value == pytest.approx(expected)


def test_white_noise_has_near_zero_lag1() -> None:
    codes = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    assert abs(lag1_autocorrelation(codes, _pairs(5000)).value) < 0.05


def test_no_pairs_is_undefined_with_a_reason() -> None:
    result = Lag1Autocorrelation(3).result()
    assert result.value is None and "no temporal pairs" in result.reason


def test_merging_chunks_equals_one_pass() -> None:
    gen = np.random.default_rng(1)
    x, y = gen.standard_normal((300, 5)) + 4, gen.standard_normal((300, 5)) + 2
    y[:, :2] += x[:, :2]
    acc = Lag1Autocorrelation(5)
    for start in range(0, 300, 37):
        acc.update(x[start:start + 37], y[start:start + 37])
    expected = [np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(5)]
    np.testing.assert_allclose(acc.per_concept(), expected, rtol=1e-9)
