"""Lag-1 autocorrelation of concept activations within records: are concepts smooth in time?

Pairs: all temporal pairs (t, t+1) of the evaluation split (consecutive windows of one record, from
`stsae.data.dataset.temporal_pairs`). With x_c = f_c(z_t), y_c = f_c(z_{t+1}) over the pairs, pooled
cov_c = cov(x_c, y_c) and var_c^x, var_c^y the variances of concept c on the two sides:

    lag1_autocorr            = Σ_c cov_c / Σ_c sqrt(var_c^x · var_c^y)        (primary, leaderboard)
    lag1_autocorr_unweighted = mean over c of r_c = cov_c / sqrt(var_c^x · var_c^y)

The primary form is the share of the code's variance that persists to the next window: each concept
counts in proportion to its variance, so a sparse code's hundreds of rarely-firing concepts (r ≈ 0
from a handful of activations) do not drown the few that carry the signal, and a dense code of a few
components is measured by the same formula. The unweighted mean is kept for comparison. Both sums
and the mean run over the concepts that vary on both sides of the pairs; a constant concept (e.g.
never active) has no correlation and is left out. If no concept varies (a constant code) or there
are no pairs, both are undefined and reported as None with the reason, never as a number.

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
