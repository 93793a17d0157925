"""Lag-1 autocorrelation of concept activations: are concepts smooth in time within a record?

Primary (`WithinRecordLag1`, leaderboard `lag1_within_record`): each concept demeaned within its
record, adjacent-pair minus non-adjacent-pair correlation, with the between-record variance share
beside it; see the class docstring.

Pooled (`Lag1Autocorrelation`, leaderboard `lag1_pooled*`, kept for comparison): all temporal pairs
(t, t+1) of the evaluation split (consecutive windows of one record, from
`stsae.data.dataset.temporal_pairs`). With x_c = f_c(z_t), y_c = f_c(z_{t+1}) over the pairs, pooled
cov_c = cov(x_c, y_c) and var_c^x, var_c^y the variances of concept c on the two sides:

    lag1_pooled            = Σ_c cov_c / Σ_c sqrt(var_c^x · var_c^y)
    lag1_pooled_unweighted = mean over c of r_c = cov_c / sqrt(var_c^x · var_c^y)

Because the pairs are pooled across records, a concept that differs between records but is flat
within them scores ≈ 1: most of a model's code variance lies between records (README "Measured"), so
this number mostly measures that, not temporal smoothness. The weighted form counts each concept in
proportion to its variance, so a sparse code's hundreds of rarely-firing concepts (r ≈ 0 from a
handful of activations) do not drown the few that carry the signal; the unweighted mean is kept
beside it. Both run over the concepts that vary on both sides of the pairs; a constant concept
(e.g. never active) has no correlation and is left out. If no concept varies (a constant code) or
there are no pairs, both are undefined and reported as None with the reason, never as a number.

Moments are merged chunk by chunk (Chan et al.), so any number of pairs streams in bounded memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A concept whose variance is below this fraction of its squared mean (plus a tiny absolute floor)
# is treated as constant: float rounding never turns a constant code into a spurious correlation.
_CONSTANT_RTOL = 1e-10
_CONSTANT_ATOL = 1e-30


@dataclass
class Lag1Result:
    """value: variance-weighted pooled lag-1 autocorrelation; unweighted: mean r_c over the concepts
    that vary (both None when undefined, with `reason`)."""

    value: float | None
    unweighted: float | None
    n_pairs: int
    n_defined: int
    reason: str | None = None


class Lag1Autocorrelation:
    """Streaming accumulator of per-concept pooled Pearson r between f(z_t) and f(z_{t+1})."""

    def __init__(self, n_concepts: int):
        self.n = 0
        self.mean_x = np.zeros(n_concepts)
        self.mean_y = np.zeros(n_concepts)
        self.m2_x = np.zeros(n_concepts)
        self.m2_y = np.zeros(n_concepts)
        self.c_xy = np.zeros(n_concepts)

    def update(self, f_t: np.ndarray, f_t1: np.ndarray) -> None:
        """f_t, f_t1: float[P, K] codes of the first and second window of P pairs."""
        if f_t.shape != f_t1.shape or f_t.ndim != 2 or f_t.shape[1] != len(self.mean_x):
            raise ValueError(f"f_t {list(f_t.shape)} and f_t1 {list(f_t1.shape)} must both be "
                             f"[P, {len(self.mean_x)}]")
        nb = f_t.shape[0]
        if nb == 0:
            return
        x, y = f_t.astype(np.float64), f_t1.astype(np.float64)
        mx, my = x.mean(axis=0), y.mean(axis=0)
        dx, dy = x - mx, y - my
        m2x, m2y, cxy = (dx * dx).sum(axis=0), (dy * dy).sum(axis=0), (dx * dy).sum(axis=0)
        na, n = self.n, self.n + nb
        delta_x, delta_y = mx - self.mean_x, my - self.mean_y
        self.m2_x += m2x + delta_x**2 * na * nb / n
        self.m2_y += m2y + delta_y**2 * na * nb / n
        self.c_xy += cxy + delta_x * delta_y * na * nb / n
        self.mean_x += delta_x * nb / n
        self.mean_y += delta_y * nb / n
        self.n = n

    def _varies(self) -> np.ndarray:
        """bool[K]: concept c varies on both sides of the pairs."""
        var_x, var_y = self.m2_x / max(self.n, 1), self.m2_y / max(self.n, 1)
        return (var_x > _CONSTANT_RTOL * self.mean_x**2 + _CONSTANT_ATOL) & (
            var_y > _CONSTANT_RTOL * self.mean_y**2 + _CONSTANT_ATOL)

    def per_concept(self) -> np.ndarray:
        """float64[K] r_c, NaN where concept c is constant on either side of the pairs."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.c_xy / np.sqrt(self.m2_x * self.m2_y)
        return np.where(self._varies(), np.clip(r, -1.0, 1.0), np.nan)

    def result(self) -> Lag1Result:
        if self.n == 0:
            return Lag1Result(None, None, 0, 0, "no temporal pairs in the evaluation split")
        varies = self._varies()
        if not varies.any():
            return Lag1Result(None, None, self.n, 0, "constant code: no concept varies across temporal pairs")
        pooled = self.c_xy[varies].sum() / np.sqrt(self.m2_x[varies] * self.m2_y[varies]).sum()
        unweighted = self.per_concept()[varies].mean()
        return Lag1Result(float(np.clip(pooled, -1.0, 1.0)), float(unweighted), self.n, int(varies.sum()))


def lag1_autocorrelation(codes: np.ndarray, pairs: np.ndarray) -> Lag1Result:
    """In-memory convenience: codes float[N, K], pairs int64[P, 2] rows (t, t+1) into codes."""
    acc = Lag1Autocorrelation(codes.shape[1])
    acc.update(codes[pairs[:, 0]], codes[pairs[:, 1]])
    return acc.result()


@dataclass
class WithinRecordLag1Result:
    """value: within-record lag-1 (adjacent minus non-adjacent, variance-weighted; None when undefined,
    with `reason`); between_share: share of the code's variance that lies between records."""

    value: float | None
    between_share: float | None
    n_records: int
    n_pairs: int
    reason: str | None = None


class WithinRecordLag1:
    """Lag-1 autocorrelation of concepts *within* records, free of the demeaning bias.

    Why: a pooled lag-1 over all pairs mostly measures how much a concept differs between records (a
    concept constant within each record but different across records scores ≈ 1). Here each concept
    is demeaned within its record (a gap-free run of consecutive windows), so only within-record
    dynamics remain. Demeaning alone biases the adjacent-pair correlation by ≈ −1/(n − 1) (n windows
    per record), so the estimator subtracts the same correlation over the record's non-adjacent pairs:

        lag1_within_record = Σ_c (A_c / N_adj − B_c / N_non) / Σ_c (S_c / N)

    with, pooled over records r and for concept c, x = f_c demeaned within r: A_c = Σ_t x_t x_{t+1}
    (N_adj adjacent pairs), B_c = Σ_{|i−j|≥2} x_i x_j (N_non non-adjacent unordered pairs; equal to
    −S_r/2 − A_r since the demeaned values sum to 0), S_c = Σ x² (N windows). Each concept counts in
    proportion to its within-record variance, as in the weighted pooled form.

    Under within-record exchangeability (no serial dependence) adjacent and non-adjacent pairs share
    one expectation, so the estimator is exactly unbiased at 0 whatever the record length; for a
    serially dependent code it is ρ₁ minus the mean correlation of the non-adjacent pairs, which for
    AR(1) shrinks as O(1 / ((1 − ρ) n)) (≈ 0.8 for ρ = 0.8 on long records, lower on short ones).

    between_record_variance_share = 1 − Σ_c S_c / Σ_c T_c, T_c the sum of squares of f_c about its
    mean over all windows of the records.

    Streaming: `update(codes, run_ids)` takes consecutive rows in order with the run label of each row
    (runs contiguous, rows in time order); a run is finalised once a later run starts, so only the
    codes of the current run are buffered.
    """

    def __init__(self, n_concepts: int):
        self.adjacent = np.zeros(n_concepts)
        self.non_adjacent = np.zeros(n_concepts)
        self.within_ss = np.zeros(n_concepts)
        self.total_sum = np.zeros(n_concepts)
        self.total_sq = np.zeros(n_concepts)
        self.n_rows = self.n_adjacent = self.n_non_adjacent = self.n_records = 0
        self._buffer: list[np.ndarray] = []
        self._run: object | None = None

    def _finish_run(self) -> None:
        if not self._buffer:
            return
        x = np.concatenate(self._buffer).astype(np.float64)
        self._buffer = []
        n = len(x)
        self.total_sum += x.sum(axis=0)
        self.total_sq += (x * x).sum(axis=0)
        self.n_rows += n
        self.n_records += 1
        d = x - x.mean(axis=0)
        ss = (d * d).sum(axis=0)
        adjacent = (d[:-1] * d[1:]).sum(axis=0)
        self.within_ss += ss
        self.adjacent += adjacent
        self.non_adjacent += -ss / 2 - adjacent
        self.n_adjacent += n - 1
        self.n_non_adjacent += (n - 1) * (n - 2) // 2

    def update(self, codes: np.ndarray, run_ids: np.ndarray) -> None:
        """codes: float[B, K] of consecutive rows; run_ids: [B] the record run of each row."""
        if codes.ndim != 2 or codes.shape[1] != len(self.adjacent) or len(run_ids) != len(codes):
            raise ValueError(f"codes {list(codes.shape)} must be [B, {len(self.adjacent)}] with one run id "
                             f"per row (got {len(run_ids)})")
        if len(codes) == 0:
            return
        starts = np.flatnonzero(np.r_[True, run_ids[1:] != run_ids[:-1]])
        for start, stop in zip(starts, np.r_[starts[1:], len(codes)], strict=True):
            if run_ids[start] != self._run:
                self._finish_run()
                self._run = run_ids[start]
            self._buffer.append(codes[start:stop])

    def result(self) -> WithinRecordLag1Result:
        self._finish_run()
        total_ss = (self.total_sq - self.total_sum**2 / max(self.n_rows, 1)).sum()
        within = self.within_ss.sum()
        share = float(np.clip(1.0 - within / total_ss, 0.0, 1.0)) if total_ss > _CONSTANT_ATOL else None
        base = (share, self.n_records, self.n_adjacent)
        if self.n_adjacent == 0 or self.n_non_adjacent == 0:
            return WithinRecordLag1Result(None, *base, "no record with three or more consecutive windows")
        if within <= _CONSTANT_RTOL * max(total_ss, 0.0) + _CONSTANT_ATOL:
            return WithinRecordLag1Result(None, *base, "no concept varies within records")
        variance = within / self.n_rows
        value = (self.adjacent.sum() / self.n_adjacent - self.non_adjacent.sum() / self.n_non_adjacent) / variance
        return WithinRecordLag1Result(float(np.clip(value, -1.0, 1.0)), *base)


def record_runs(n_rows: int, pairs: np.ndarray) -> np.ndarray:
    """int64[n_rows] run label of each row: rows joined by a temporal pair (r, r + 1) share a run.

    pairs: int64[P, 2] into the same rows (positions, not memmap rows). Pairs that do not join
    neighbouring positions are rejected: the within-record estimator streams runs as contiguous blocks.
    """
    if len(pairs) and np.any(pairs[:, 1] != pairs[:, 0] + 1):
        raise ValueError("temporal pairs must join neighbouring rows (index rows in record/time order)")
    joined = np.zeros(n_rows, dtype=bool)
    joined[pairs[:, 1]] = True
    return np.cumsum(~joined) - 1


def lag1_within_record(codes: np.ndarray, run_ids: np.ndarray) -> WithinRecordLag1Result:
    """In-memory convenience: codes float[N, K] in record/time order, run_ids [N] (see the class)."""
    acc = WithinRecordLag1(codes.shape[1])
    acc.update(codes, np.asarray(run_ids))
    return acc.result()
