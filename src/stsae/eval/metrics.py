"""Reconstruction, sparsity and augmentation-consistency metrics, streamed over memmap rows in chunks.

Each metric is a small accumulator (`update` per chunk, `result` at the end) so a million windows never
need their K-wide codes in memory at once; `stream_metrics` runs all of them, plus the lag-1
autocorrelation of `stsae.eval.temporal`, in one pass over the evaluation rows.

Definitions (codes f = encode(z), active = f != 0):
- EV      = 1 − Σ_i ‖z_i − ẑ_i‖² / Σ_i ‖z_i − μ_train‖²   (μ_train: float32[512] mean of the train split)
- L0      = mean over windows of |active(f(z_i))|
- never fired on test = fraction of atoms never active on any of the n evaluated windows (n stated
            beside it: with few windows a rare atom looks dead; the training-time dead fraction of Gao
            et al. comes from the trainer's sidecar instead)
- Jaccard = mean_i |A_i ∩ B_i| / |A_i ∪ B_i| with A_i, B_i the active sets of f(z_i), f(z_aug_i)
            (two empty sets count as identical: 1); on z_aug (the families L_stab trained on) and,
            when given, on z_aug_heldout (families the model never trained against)
- cosine  = mean_i cos(f(z_i), f(z_aug_i)) (two zero vectors: 1; exactly one zero vector: 0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stsae.eval.temporal import (
    Lag1Autocorrelation,
    Lag1Result,
    WithinRecordLag1,
    WithinRecordLag1Result,
    record_runs,
)
from stsae.utils import io

Encode = Callable[[np.ndarray], np.ndarray]
Decode = Callable[[np.ndarray], np.ndarray]


class ExplainedVariance:
    """EV = 1 − Σ‖z − ẑ‖² / Σ‖z − μ_train‖², accumulated in float64."""

    def __init__(self, train_mean: np.ndarray):
        if train_mean.ndim != 1:
            raise ValueError(f"train_mean must be float[D], got shape {list(train_mean.shape)}")
        self.mean = train_mean.astype(np.float64)
        self.sse = 0.0
        self.sst = 0.0

    def update(self, z: np.ndarray, z_hat: np.ndarray) -> None:
        """z, z_hat: float[B, D]."""
        if z.shape != z_hat.shape or z.shape[1:] != self.mean.shape:
            raise ValueError(f"z {list(z.shape)} and z_hat {list(z_hat.shape)} must be [B, {len(self.mean)}]")
        z64 = z.astype(np.float64)
        self.sse += float(((z64 - z_hat) ** 2).sum())
        self.sst += float(((z64 - self.mean) ** 2).sum())

    def result(self) -> float:
        """NaN when every z equals μ_train (EV undefined)."""
        return 1.0 - self.sse / self.sst if self.sst > 0 else float("nan")


def explained_variance(z: np.ndarray, z_hat: np.ndarray, train_mean: np.ndarray) -> float:
    """In-memory EV of z_hat against z: float[N, D] each; train_mean: float[D]."""
    acc = ExplainedVariance(train_mean)
    acc.update(z, z_hat)
    return acc.result()


class Sparsity:
    """L0 (mean active atoms per window) and the atoms ever active (never-fired fraction)."""

    def __init__(self, n_concepts: int):
        self.n_rows = 0
        self.n_active = 0
        self.ever_active = np.zeros(n_concepts, dtype=bool)

    def update(self, codes: np.ndarray) -> None:
        """codes: float[B, K]."""
        active = codes != 0
        self.n_rows += codes.shape[0]
        self.n_active += int(active.sum())
        self.ever_active |= active.any(axis=0)

    def l0(self) -> float:
        return self.n_active / self.n_rows if self.n_rows else float("nan")

    def never_fired_fraction(self) -> float:
        return float(1.0 - self.ever_active.mean()) if self.n_rows else float("nan")


class Consistency:
    """Mean Jaccard of active sets and mean cosine of f(z) vs f(z_aug), per window."""

    def __init__(self) -> None:
        self.n = 0
        self.jaccard_sum = 0.0
        self.cosine_sum = 0.0

    def update(self, codes: np.ndarray, codes_aug: np.ndarray) -> None:
        """codes, codes_aug: float[B, K] for the same windows, clean and augmented."""
        if codes.shape != codes_aug.shape:
            raise ValueError(f"codes {list(codes.shape)} and codes_aug {list(codes_aug.shape)} differ")
        a, b = codes != 0, codes_aug != 0
        inter, union = (a & b).sum(axis=1), (a | b).sum(axis=1)
        jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        x, y = codes.astype(np.float64), codes_aug.astype(np.float64)
        nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        dot = (x * y).sum(axis=1)
        both_zero, one_zero = (nx == 0) & (ny == 0), (nx == 0) ^ (ny == 0)
        cosine = np.where(both_zero, 1.0, np.where(one_zero, 0.0, dot / np.maximum(nx * ny, 1e-300)))
        self.n += codes.shape[0]
        self.jaccard_sum += float(jaccard.sum())
        self.cosine_sum += float(cosine.sum())

    def jaccard(self) -> float:
        return self.jaccard_sum / self.n if self.n else float("nan")

    def cosine(self) -> float:
        return self.cosine_sum / self.n if self.n else float("nan")


@dataclass
class StreamedMetrics:
    """One view's metrics; live: bool[K] atoms active on at least one evaluated window."""

    ev: float
    l0: float
    never_fired_fraction: float
    n_windows: int
    consistency_jaccard: float
    consistency_cosine: float
    consistency_heldout_aug: float | None
    lag1: Lag1Result
    lag1_within: WithinRecordLag1Result
    live: np.ndarray


class _Accumulators:
    """Every streamed accumulator of one model's codes."""

    def __init__(self, n_concepts: int, train_mean: np.ndarray):
        self.ev, self.sparsity = ExplainedVariance(train_mean), Sparsity(n_concepts)
        self.consistency, self.lag1 = Consistency(), Lag1Autocorrelation(n_concepts)
        self.heldout, self.within = Consistency(), WithinRecordLag1(n_concepts)

    def result(self) -> StreamedMetrics:
        heldout = self.heldout.jaccard() if self.heldout.n else None
        return StreamedMetrics(self.ev.result(), self.sparsity.l0(), self.sparsity.never_fired_fraction(),
                               self.sparsity.n_rows, self.consistency.jaccard(), self.consistency.cosine(),
                               heldout, self.lag1.result(), self.within.result(), self.sparsity.ever_active)


def stream_metrics(
    encode: Encode,
    decode: Decode,
    n_concepts: int,
    z: np.ndarray,
    z_aug: np.ndarray,
    rows: np.ndarray,
    pairs: np.ndarray,
    train_mean: np.ndarray,
    chunk_rows: int = 8192,
    z_aug_heldout: np.ndarray | None = None,
) -> StreamedMetrics:
    """Every streamed metric in one pass over `rows` of z / z_aug (float32[M, 512] memmaps).

    rows: int64[N] sorted row numbers to evaluate. pairs: int64[P, 2] temporal pairs (row t, row t+1),
    both rows in `rows`, and rows joined by pairs neighbours in `rows` (records in time order: the
    within-record lag-1 streams them as runs). z_aug_heldout: float32[M, 512] embeddings of the
    held-out augmentation families (None: no held-out consistency). Each chunk is encoded once
    (clean and augmented); a pair whose two rows fall in one chunk is scored from that chunk's codes,
    and the few pairs that straddle chunks are encoded again at the end.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and np.any(np.diff(rows) <= 0):
        raise ValueError("rows must be strictly increasing")
    pos = np.searchsorted(rows, pairs) if len(pairs) else np.empty((0, 2), dtype=np.int64)
    if len(pairs) and not np.array_equal(rows[np.minimum(pos, len(rows) - 1)], pairs):
        raise ValueError("every temporal pair must have both rows in `rows`")
    runs = record_runs(len(rows), pos)
    acc = _Accumulators(n_concepts, train_mean)
    chunk_of = pos // chunk_rows
    straddling = chunk_of[:, 0] != chunk_of[:, 1]
    for start in range(0, len(rows), chunk_rows):
        chunk = rows[start:start + chunk_rows]
        z_chunk = np.asarray(z[chunk], dtype=np.float32)
        dense, dense_aug = encode(z_chunk), encode(np.asarray(z_aug[chunk], dtype=np.float32))
        inside = (chunk_of[:, 0] == start // chunk_rows) & ~straddling
        local = pos[inside] - start
        dense_heldout = None if z_aug_heldout is None else encode(_encoded_rows(z_aug_heldout, chunk))
        acc.ev.update(z_chunk, decode(dense))
        acc.sparsity.update(dense)
        acc.consistency.update(dense, dense_aug)
        if dense_heldout is not None:
            acc.heldout.update(dense, dense_heldout)
        acc.lag1.update(dense[local[:, 0]], dense[local[:, 1]])
        acc.within.update(dense, runs[start:start + chunk_rows])
        for mapped in (z, z_aug, z_aug_heldout):
            if mapped is not None:
                io.release_mapped_pages(mapped)
    for start in range(0, int(straddling.sum()), chunk_rows):
        part = pairs[straddling][start:start + chunk_rows]
        first = encode(np.asarray(z[part[:, 0]], dtype=np.float32))
        second = encode(np.asarray(z[part[:, 1]], dtype=np.float32))
        acc.lag1.update(first, second)
    return acc.result()


def _encoded_rows(z_aug_heldout: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """z_aug_heldout[rows] as float32, refusing rows extraction left NaN (it encodes test windows only)."""
    block = np.asarray(z_aug_heldout[rows], dtype=np.float32)
    if not np.isfinite(block).all():
        raise ValueError("z_aug_heldout: some evaluated rows were never encoded (NaN); the held-out view "
                         "covers the test split only (data/augment_views.py HELDOUT_SPLITS)")
    return block


def streamed_mean(z: np.ndarray, rows: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """μ = mean of z[rows] (float32[512]), accumulated in float64 chunk by chunk."""
    if len(rows) == 0:
        raise ValueError("cannot take the mean of zero rows")
    total = np.zeros(z.shape[1], dtype=np.float64)
    for start in range(0, len(rows), chunk_rows):
        total += np.asarray(z[rows[start:start + chunk_rows]], dtype=np.float64).sum(axis=0)
        io.release_mapped_pages(z)
    return (total / len(rows)).astype(np.float32)
