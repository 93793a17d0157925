"""Many logistic regressions at once: one per column of a covariate, all sharing outcome and adjustments.

The report's concept dashboard needs the HTN/T2D odds ratio of every live concept, adjusted for age and
sex: at K = 4096 that was 7,490 separate statsmodels fits (142 of the report stage's 223 s, README).
Every fit has the same outcome, the same adjustment columns and the same patients; only one column
differs. So the Newton iterations run for all columns together on (B, p, p) Hessians built from
matrix products, never materialising a (B, n, p) design.

The iteration is the one `statsmodels.Logit.fit(method="newton")` runs, so the numbers agree with it to
solver precision: start at 0; step H⁻¹g with a 1e-10 ridge on the per-observation Hessian; stop when no
coefficient moved more than `tol`; standard errors from the unridged Hessian at the solution; Wald CI
with the normal quantile; two-sided normal p. A column is reported, never silently wrong, when its fit
fails: `status` says "separation" (every fitted probability within 1e-8 of its outcome, statsmodels'
perfect-prediction check), "no convergence" (still moving after `maxiter` steps), or "singular"
(a non-finite step or a Hessian that cannot be inverted at the solution).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import erfc, expit

Z95 = 1.959963984540054
"""Standard normal 97.5 % quantile (statsmodels' Wald CI uses the normal, not t, for Logit)."""
OK = "ok"
_RIDGE = 1e-10
_PERFECT_ATOL = 1e-8
_MAX_CELLS = 1 << 18  # cells per chunk: working arrays stay cache-sized (2^22 ran 2x slower at K=3745)


class LogitBatch(NamedTuple):
    """Per column b of the varying covariate: coefficients float64[B, p] in design order
    [const, varying, *shared], their standard errors float64[B, p], Newton steps int64[B], and
    status str[B] (OK, or why the fit is not usable; coef/se are NaN then)."""

    coef: np.ndarray
    se: np.ndarray
    iterations: np.ndarray
    status: np.ndarray

    def wald(self, column: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(beta, ci_low, ci_high, p) float64[B] of one design column (default: the varying one)."""
        beta, se = self.coef[:, column], self.se[:, column]
        with np.errstate(invalid="ignore", divide="ignore"):
            p = erfc(np.abs(beta / se) / np.sqrt(2.0))
        return beta, beta - Z95 * se, beta + Z95 * se, p


def _gram(weights: np.ndarray, varying: np.ndarray, shared: np.ndarray, shared_outer: np.ndarray) -> np.ndarray:
    """float64[B, p, p] X_bᵀ diag(w_b) X_b for X_b = [1, varying[:, b], shared] (p = 2 + q).

    weights, varying: float64[B, n] (varying transposed); shared: float64[n, q]; shared_outer: float64[n, q*q].
    """
    n_batch, q = weights.shape[0], shared.shape[1]
    wv = weights * varying
    gram = np.empty((n_batch, q + 2, q + 2))
    gram[:, 0, 0] = weights.sum(axis=1)
    gram[:, 0, 1] = gram[:, 1, 0] = wv.sum(axis=1)
    gram[:, 1, 1] = (wv * varying).sum(axis=1)
    gram[:, 0, 2:] = gram[:, 2:, 0] = weights @ shared
    gram[:, 1, 2:] = gram[:, 2:, 1] = wv @ shared
    gram[:, 2:, 2:] = (weights @ shared_outer).reshape(n_batch, q, q)
    return gram


def _score(residual: np.ndarray, varying: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """float64[B, p] X_bᵀ r_b for residual r = y − μ, float64[B, n]."""
    return np.concatenate([residual.sum(axis=1, keepdims=True), (residual * varying).sum(axis=1, keepdims=True),
                           residual @ shared], axis=1)


def _linear(coef: np.ndarray, varying: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """float64[B, n] linear predictor X_b β_b."""
    return coef[:, :1] + coef[:, 1:2] * varying + coef[:, 2:] @ shared.T


def _fit_chunk(varying: np.ndarray, shared: np.ndarray, y: np.ndarray, maxiter: int,
               tol: float) -> LogitBatch:
    """Newton on a chunk of columns; varying: float64[B, n] (one row per fit). Columns that stop (converged,
    separated, non-finite) leave the working arrays, so late iterations cost only what is still moving."""
    n_batch, n = varying.shape
    p = shared.shape[1] + 2
    shared_outer = (shared[:, :, None] * shared[:, None, :]).reshape(n, -1)
    coef = np.zeros((n_batch, p))
    iterations = np.zeros(n_batch, dtype=np.int64)
    status = np.full(n_batch, "no convergence", dtype=object)
    ridge = _RIDGE * np.eye(p)
    index, beta, v = np.arange(n_batch), coef.copy(), varying
    mu = np.full((n_batch, n), 0.5)
    residual = y - mu
    for _ in range(maxiter):
        if not index.size:
            break
        hessian = _gram(mu * (1.0 - mu), v, shared, shared_outer) / n + ridge
        step = np.linalg.solve(hessian, _score(residual, v, shared)[:, :, None] / n)[:, :, 0]
        beta += step
        iterations[index] += 1
        mu = expit(_linear(beta, v, shared))
        residual = y - mu
        bad = ~np.isfinite(step).all(axis=1)
        perfect = (np.abs(residual) <= _PERFECT_ATOL).all(axis=1) & ~bad
        done = (np.abs(step) <= tol).all(axis=1) & ~bad & ~perfect
        stop = bad | perfect | done
        if stop.any():
            status[index[bad]], status[index[perfect]], status[index[done]] = "singular", "separation", OK
            coef[index[stop]] = beta[stop]
            keep = ~stop
            index, beta, v, mu, residual = index[keep], beta[keep], v[keep], mu[keep], residual[keep]
    coef[index] = beta
    return _standard_errors(coef, iterations, status, varying, shared, shared_outer)


def _standard_errors(coef: np.ndarray, iterations: np.ndarray, status: np.ndarray, varying: np.ndarray,
                     shared: np.ndarray, shared_outer: np.ndarray) -> LogitBatch:
    """SEs from the inverse unridged information at the solution; non-OK or non-invertible fits -> NaN."""
    mu = expit(_linear(coef, varying, shared))
    information = _gram(mu * (1.0 - mu), varying, shared, shared_outer)
    finite = np.isfinite(information).all(axis=(1, 2))
    invertible = finite.copy()
    invertible[finite] = np.linalg.cond(information[finite]) < 1.0 / np.finfo(np.float64).eps
    status = np.where((status == OK) & ~invertible, "singular", status)
    se = np.full_like(coef, np.nan)
    good = status == OK
    if good.any():
        se[good] = np.sqrt(np.diagonal(np.linalg.inv(information[good]), axis1=1, axis2=2))
    coef = np.where(good[:, None], coef, np.nan)
    return LogitBatch(coef, se, iterations, status.astype(str))


def logit_per_column(varying: np.ndarray, shared: np.ndarray, y: np.ndarray, *, maxiter: int = 200,
                     tol: float = 1e-8) -> LogitBatch:
    """Fit logit(P(y=1)) = β0 + β1·varying[:, b] + sharedᵀγ for every column b (module docstring).

    varying: float[n, B]; shared: float[n, q] adjustment columns (no constant); y: 0/1 float[n].
    Columns are fitted in chunks of at most ~4M cells so memory stays bounded at large B.
    """
    varying = np.asarray(varying, dtype=np.float64)
    shared = np.asarray(shared, dtype=np.float64).reshape(len(varying), -1)
    y = np.asarray(y, dtype=np.float64)
    if varying.ndim != 2 or len(y) != len(varying):
        raise ValueError(f"varying must be [n, B] with n = len(y) = {len(y)}; got {varying.shape}")
    step = max(1, _MAX_CELLS // max(len(y), 1))
    parts = [_fit_chunk(np.ascontiguousarray(varying[:, s:s + step].T), shared, y, maxiter, tol)
             for s in range(0, varying.shape[1], step)]
    if not parts:
        empty = np.zeros((0, shared.shape[1] + 2))
        return LogitBatch(empty, empty.copy(), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=str))
    return LogitBatch(*(np.concatenate(field) for field in zip(*parts, strict=True)))
