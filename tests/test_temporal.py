"""Lag-1 autocorrelation of concept activations: definition, constant codes, streaming."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.eval.temporal import (
    Lag1Autocorrelation,
    WithinRecordLag1,
    lag1_autocorrelation,
    lag1_within_record,
    record_runs,
)


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


def _ar1(n_records: int, length: int, rho: float, seed: int = 0) -> np.ndarray:
    """float[n_records * length, 1]: independent stationary AR(1) series, one per record."""
    gen = np.random.default_rng(seed)
    x = np.empty((n_records, length))
    x[:, 0] = gen.standard_normal(n_records)
    for t in range(1, length):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * gen.standard_normal(n_records)
    return x.reshape(-1, 1)


def test_record_constant_code_has_no_within_record_lag1_but_all_variance_between_records() -> None:
    """Constant within each record (plus faint white noise), random between records: the pooled lag-1
    reports ≈ 1 (it measures between-record variance), the within-record lag-1 ≈ 0 and the share ≈ 1."""
    gen = np.random.default_rng(0)
    runs = np.repeat(np.arange(200), 30)
    codes = np.repeat(5.0 * gen.standard_normal((200, 3)), 30, axis=0) + 0.05 * gen.standard_normal((6000, 3))
    pairs = np.flatnonzero(runs[1:] == runs[:-1])
    pooled = lag1_autocorrelation(codes, np.stack([pairs, pairs + 1], axis=1))
    within = lag1_within_record(codes, runs)
    assert pooled.value > 0.99
    assert abs(within.value) < 0.03 and within.between_share > 0.999


@pytest.mark.parametrize("length", [30, 200, 1000])
def test_ar1_within_long_records_recovers_rho(length: int) -> None:
    codes = _ar1(max(20, 6000 // length), length, 0.8)
    result = lag1_within_record(codes, np.repeat(np.arange(len(codes) // length), length))
    assert result.value == pytest.approx(0.8, abs=0.03)


def test_white_noise_in_short_records_is_zero_without_the_demeaning_bias() -> None:
    """Demeaning within 5-window records biases the adjacent-pair correlation to −1/(n−1) = −0.25;
    subtracting the non-adjacent pairs' correlation removes it."""
    gen = np.random.default_rng(1)
    codes = gen.standard_normal((20_000, 2))
    runs = np.repeat(np.arange(4000), 5)
    d = codes - np.repeat(codes.reshape(4000, 5, 2).mean(axis=1), 5, axis=0)
    adjacent = runs[1:] == runs[:-1]
    naive = (d[:-1] * d[1:])[adjacent].mean() / (d * d).mean()
    assert naive == pytest.approx(-0.25, abs=0.02)
    assert abs(lag1_within_record(codes, runs).value) < 0.02


def test_streaming_in_chunks_equals_in_memory_even_when_chunks_split_records() -> None:
    codes = _ar1(10, 37, 0.5, seed=3) * np.array([[1.0, 2.0]])
    runs = np.repeat(np.arange(10), 37)
    acc = WithinRecordLag1(2)
    for start in range(0, len(codes), 16):
        acc.update(codes[start:start + 16], runs[start:start + 16])
    whole = lag1_within_record(codes, runs)
    streamed = acc.result()
    assert streamed.value == pytest.approx(whole.value, rel=1e-12)
    assert streamed.between_share == pytest.approx(whole.between_share, rel=1e-9)
    assert (streamed.n_records, streamed.n_pairs) == (10, 360)


def test_records_too_short_for_non_adjacent_pairs_are_undefined_with_a_reason() -> None:
    result = lag1_within_record(np.arange(8.0)[:, None], np.repeat(np.arange(4), 2))
    assert result.value is None and "three or more" in result.reason


def test_record_runs_follow_the_temporal_pairs() -> None:
    pairs = np.array([[0, 1], [1, 2], [4, 5]])
    np.testing.assert_array_equal(record_runs(6, pairs), [0, 0, 0, 1, 2, 2])
    with pytest.raises(ValueError, match="neighbouring"):
        record_runs(6, np.array([[0, 2]]))
