"""Streaming metrics: EV, L0, dead fraction, consistency, top-k sparsification, one-pass driver."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.eval.metrics import (
    Consistency,
    Sparsity,
    explained_variance,
    stream_metrics,
    streamed_mean,
)
from stsae.eval.temporal import lag1_autocorrelation

GEN = np.random.default_rng(0)
Z = GEN.standard_normal((64, 512)).astype(np.float32) + 3.0


def top_k_codes(codes: np.ndarray, k: int | None) -> np.ndarray:
    """Keep each row's k entries of largest |activation|, zero the rest: float32[N, K] -> float32[N, K].

    Truncation, the old matched-sparsity rule: the reference the k-sparse re-encoding must beat (tests only).
    """
    if k is None:
        return codes
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= codes.shape[1]:
        return codes
    keep = np.argpartition(-np.abs(codes), k - 1, axis=1)[:, :k]
    out = np.zeros_like(codes)
    np.put_along_axis(out, keep, np.take_along_axis(codes, keep, axis=1), axis=1)
    return out


def test_perfect_reconstruction_has_ev_one() -> None:
    assert explained_variance(Z, Z, Z.mean(0)) == pytest.approx(1.0)


def test_predicting_the_train_mean_has_ev_zero() -> None:
    mean = Z.mean(0)
    assert explained_variance(Z, np.broadcast_to(mean, Z.shape), mean) == pytest.approx(0.0, abs=1e-9)


def test_l0_counts_nonzero_codes_and_never_fired_counts_never_active_atoms() -> None:
    codes = np.zeros((4, 5), dtype=np.float32)
    codes[0, [0, 1]] = 1.0
    codes[1, 0] = -2.0
    acc = Sparsity(5)
    acc.update(codes)
    assert acc.l0() == pytest.approx(3 / 4)
    assert acc.never_fired_fraction() == pytest.approx(3 / 5)


def test_consistency_of_identical_codes_is_one() -> None:
    acc = Consistency()
    acc.update(top_k_codes(Z, 8), top_k_codes(Z, 8))
    assert (acc.jaccard(), acc.cosine()) == (pytest.approx(1.0), pytest.approx(1.0))


def test_consistency_of_disjoint_codes_is_zero() -> None:
    a, b = np.eye(4, dtype=np.float32), np.roll(np.eye(4, dtype=np.float32), 1, axis=1)
    acc = Consistency()
    acc.update(a, b)
    assert (acc.jaccard(), acc.cosine()) == (0.0, 0.0)


def test_two_empty_codes_count_as_identical_and_one_empty_as_orthogonal() -> None:
    acc = Consistency()
    acc.update(np.zeros((2, 3), np.float32), np.array([[0, 0, 0], [1, 0, 0]], np.float32))
    assert acc.jaccard() == pytest.approx(0.5) and acc.cosine() == pytest.approx(0.5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(0, 10_000))
def test_top_k_keeps_exactly_the_k_largest_magnitudes(k: int, seed: int) -> None:
    codes = np.random.default_rng(seed).standard_normal((6, 20)).astype(np.float32)
    kept = top_k_codes(codes, k)
    assert ((kept != 0).sum(axis=1) == k).all()
    threshold = np.sort(np.abs(codes), axis=1)[:, -k][:, None]
    np.testing.assert_array_equal(kept, np.where(np.abs(codes) >= threshold, codes, 0))


def test_streamed_metrics_do_not_depend_on_chunk_size() -> None:
    z_aug = Z + 0.1 * GEN.standard_normal(Z.shape).astype(np.float32)
    rows = np.arange(0, 64, dtype=np.int64)
    pairs = np.stack([rows[:-1], rows[1:]], axis=1)
    w = GEN.standard_normal((512, 32)).astype(np.float32)

    def encode(x: np.ndarray) -> np.ndarray:
        return top_k_codes(np.maximum(x @ w, 0), 4)

    def decode(c: np.ndarray) -> np.ndarray:
        return c @ np.linalg.pinv(w)

    mean = Z.mean(0)
    whole = stream_metrics(encode, decode, 32, Z, z_aug, rows, pairs, mean, chunk_rows=64)
    chunked = stream_metrics(encode, decode, 32, Z, z_aug, rows, pairs, mean, chunk_rows=7)
    for name in ("ev", "l0", "never_fired_fraction", "consistency_jaccard", "consistency_cosine"):
        assert getattr(chunked, name) == pytest.approx(getattr(whole, name), rel=1e-6)
    assert chunked.lag1_within.value == pytest.approx(whole.lag1_within.value, rel=1e-5)
    assert chunked.n_windows == 64 and chunked.live.sum() == (encode(Z) != 0).any(axis=0).sum()
    assert chunked.lag1.value == pytest.approx(lag1_autocorrelation(encode(Z), pairs).value, abs=1e-6)
    assert chunked.lag1.n_pairs == 63


def test_stream_metrics_rejects_pairs_outside_the_rows() -> None:
    with pytest.raises(ValueError, match="both rows"):
        stream_metrics(lambda x: x, lambda c: c, 512, Z, Z, np.arange(10), np.array([[9, 10]]), Z.mean(0))


def test_streamed_mean_equals_numpy_mean() -> None:
    rows = np.arange(3, 50)
    np.testing.assert_allclose(streamed_mean(Z, rows, chunk_rows=5), Z[rows].mean(0), rtol=1e-5)


def test_heldout_consistency_catches_what_the_trained_augmentation_hides() -> None:
    """An encoder trained to ignore the stability augmentation (here: z_aug = z, consistency 1) but
    thrown by an unseen perturbation scores 1 on z_aug and well below 1 on the held-out view."""
    rows = np.arange(64, dtype=np.int64)
    pairs = np.stack([rows[:-1], rows[1:]], axis=1)
    w = GEN.standard_normal((512, 32)).astype(np.float32)
    heldout = Z + 3.0 * GEN.standard_normal(Z.shape).astype(np.float32)

    def encode(x: np.ndarray) -> np.ndarray:
        return top_k_codes(np.maximum(x @ w, 0), 4)

    m = stream_metrics(encode, lambda c: c @ np.linalg.pinv(w), 32, Z, Z.copy(), rows, pairs, Z.mean(0),
                          chunk_rows=16, z_aug_heldout=heldout)
    assert m.consistency_jaccard == pytest.approx(1.0)
    assert m.consistency_heldout_aug < 0.6
    without = stream_metrics(encode, lambda c: c @ np.linalg.pinv(w), 32, Z, Z.copy(), rows, pairs,
                                Z.mean(0))
    assert without.consistency_heldout_aug is None


def test_heldout_rows_extraction_left_unencoded_are_refused() -> None:
    """z_aug_heldout holds test windows only (NaN elsewhere): scoring any other row is an error, not NaNs."""
    heldout = Z.copy()
    heldout[5] = np.nan
    rows = np.arange(10, dtype=np.int64)
    with pytest.raises(ValueError, match="z_aug_heldout: some evaluated rows were never encoded"):
        stream_metrics(lambda x: x, lambda c: c, 512, Z, Z, rows, np.empty((0, 2), np.int64), Z.mean(0),
                       z_aug_heldout=heldout)
    scored = stream_metrics(lambda x: x, lambda c: c, 512, Z, Z, rows[6:], np.empty((0, 2), np.int64), Z.mean(0),
                            z_aug_heldout=heldout)
    assert scored.consistency_heldout_aug == pytest.approx(1.0)
