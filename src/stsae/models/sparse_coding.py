"""Batched exact (non-negative) least squares and k-sparse pursuit on a dictionary's Gram matrix.

Why: NMF baselines need NNLS codes for every window, and every baseline needs k-sparse codes on its own
dictionary for the matched-sparsity comparison. Both are active-set methods run on the Gram matrix
G = D Dᵀ (float64[n, n]) and b = y Dᵀ (float64[N, n]), so the 512-d data enter only once, through b:

    minimise ‖y − x D‖²  ⇔  minimise ½ xᵀ G x − bᵀ x,   over x: float64[n] per row.

- `nnls_gram`: exact NNLS by block principal pivoting (Kim & Park 2011). Converged when the KKT
  conditions hold: x ≥ 0 on the passive set and the gradient b − xG ≤ tol on every other atom.
- `greedy_pursuit(..., k, non_negative=True)`: Lawson–Hanson (1974, ch. 23) stopped when k atoms are
  passive — a greedy k-sparse NNLS; `non_negative=False`: orthogonal matching pursuit.
- `least_squares_on_support` / `least_squares_off_support`: unconstrained least squares on a given
  support, solved on the support's block or, when most atoms are active, on the complement's block
  of G⁻¹ (NNLS picks the cheaper per batch).

All rows advance together: each iteration solves one least-squares system per live row on its passive
set, gathered into a padded batch of the largest passive-set size, so the cost grows with the number
of active atoms, not the dictionary size. Rows leave the batch as they converge.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

RTOL = 1e-10  # gradient tolerance relative to max|b| of the row (float64 normal equations)


def _gather_blocks(matrix: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's block matrix[S, S] for S = that row's mask, padded to the widest row.

    matrix: float64[n, n]; mask: bool[M, n] (some row nonempty). Returns (order int[M, w]: the atoms of
    each row first, in atom order; valid bool[M, w]; idx int[M, w]: order with padding slots pointing
    at dummy atoms n, n+1, ...; block float64[M, w, w]), where the dummy atoms have an identity block,
    so padded slots solve to 0 and one batched solve serves all rows.
    """
    n_atoms = matrix.shape[0]
    width = int(mask.sum(axis=1).max())
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    valid = np.take_along_axis(mask, order, axis=1)
    idx = np.where(valid, order, n_atoms + np.arange(width))
    extended = np.zeros((n_atoms + width, n_atoms + width))
    extended[:n_atoms, :n_atoms] = matrix
    extended[n_atoms:, n_atoms:] = np.eye(width)
    return order, valid, idx, extended[idx[:, :, None], idx[:, None, :]]


def _batched_solve(block: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """block: float64[M, w, w], rhs: float64[M, w] -> float64[M, w]."""
    try:
        return np.linalg.solve(block, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:  # linearly dependent atoms on a support: minimum-norm solution
        return (np.linalg.pinv(block, hermitian=True) @ rhs[:, :, None])[:, :, 0]


def _padded_take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values[m, idx[m]] with the dummy slots (idx >= n) reading 0."""
    n_atoms = values.shape[1]
    return np.where(idx < n_atoms, np.take_along_axis(values, np.minimum(idx, n_atoms - 1), axis=1), 0.0)


def least_squares_on_support(gram: np.ndarray, b: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Least squares restricted to each row's support: x[S] = G[S, S]⁻¹ b[S], 0 elsewhere.

    gram: float64[n, n]; b: float64[M, n]; support: bool[M, n] -> float64[M, n]. Cost ~ M |S|³ / 3.
    """
    out = np.zeros_like(b)
    if not support.any():
        return out
    order, valid, idx, block = _gather_blocks(gram, support)
    np.put_along_axis(out, order, np.where(valid, _batched_solve(block, _padded_take(b, idx)), 0.0), axis=1)
    return out


def least_squares_off_support(inverse: np.ndarray, b: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """The same solution given the complement: x minimises ½ xᵀGx − bᵀx subject to x = 0 on `zero`.

    With H = G⁻¹ and u = bH (the unconstrained optimum), x = u − λ H[R, :] with λ = u[R] H[R, R]⁻¹:
    cost ~ M (|R|³ / 3 + n |R|), far below the support solve when most atoms are active (NMF codes).
    inverse: float64[n, n] = G⁻¹ (G well conditioned); b: float64[M, n]; zero: bool[M, n].
    """
    u = b @ inverse
    if zero.any():
        order, valid, idx, block = _gather_blocks(inverse, zero)
        lam = np.zeros_like(u)
        np.put_along_axis(lam, order, np.where(valid, _batched_solve(block, _padded_take(u, idx)), 0.0), axis=1)
        u -= lam @ inverse
        u[zero] = 0.0
    return u


class _SupportSolver:
    """Least squares on each row's passive set through the cheaper of the two forms for that row (the
    support block, or — G well conditioned — G⁻¹ with the complement's block), rows grouped by block
    width so the padded batches stay tight."""

    MAX_CONDITION = 1e8
    GROUP_ROWS = 256

    def __init__(self, gram: np.ndarray):
        self.gram = gram
        self.inverse = np.linalg.inv(gram) if np.linalg.cond(gram) < self.MAX_CONDITION else None

    def __call__(self, b: np.ndarray, support: np.ndarray) -> np.ndarray:
        n_atoms = support.shape[1]
        inside = support.sum(axis=1)
        outside = n_atoms - inside
        via_inverse = (outside**3 / 3 + 2 * n_atoms * outside < inside**3 / 3) & (self.inverse is not None)
        out = np.empty_like(b)
        for rows, width in ((np.flatnonzero(via_inverse), outside), (np.flatnonzero(~via_inverse), inside)):
            rows = rows[np.argsort(width[rows], kind="stable")]
            for start in range(0, len(rows), self.GROUP_ROWS):
                group = rows[start:start + self.GROUP_ROWS]
                if via_inverse[group[0]]:
                    out[group] = least_squares_off_support(self.inverse, b[group], ~support[group])
                else:
                    out[group] = least_squares_on_support(self.gram, b[group], support[group])
        return out


def _step_to_feasible(x: np.ndarray, s: np.ndarray, passive: np.ndarray) -> None:
    """Lawson–Hanson inner step, in place: move x towards s until the first passive coordinate hits 0,
    then drop the zero coordinates from the passive set. x: float64[M, n] ≥ 0; s: its LS solution."""
    blocking = passive & (s <= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(blocking, x / (x - s), np.inf)
    alpha = np.clip(ratio.min(axis=1, keepdims=True), 0.0, 1.0)
    x += alpha * (s - x)
    passive &= x > 0
    x[~passive] = 0.0


def _refuse_rounding_entries(may_enter: np.ndarray, s: np.ndarray, rows: np.ndarray, entered: np.ndarray,
                             infeasible: np.ndarray) -> None:
    """In exact arithmetic the atom Lawson–Hanson just added is positive in the next solution; when
    rounding makes it ≤ 0 its gradient was noise, and letting it re-enter would cycle, so bar it."""
    last = entered[rows]
    s_last = s[infeasible][np.arange(len(rows)), np.maximum(last, 0)]
    bar = (last >= 0) & (s_last <= 0)
    may_enter[rows[bar], last[bar]] = False


def greedy_pursuit(gram: np.ndarray, b: np.ndarray, k: int, *, non_negative: bool,
                   rtol: float = RTOL) -> np.ndarray:
    """At most k nonzero codes per row: x: float64[N, n] (see the module docstring).

    Each step adds the atom of largest gradient (|gradient| when signed) and re-solves least squares
    on the set (non-negative: the Lawson–Hanson inner loop drops atoms that turn negative).
    gram: float[n, n] = D Dᵀ; b: float[N, n] = y Dᵀ.
    """
    gram, b = _check(gram, b)
    n_rows, n_atoms = b.shape
    may_enter = np.ones((n_rows, n_atoms), bool)
    x = np.zeros((n_rows, n_atoms))
    passive = np.zeros((n_rows, n_atoms), bool)
    tol = _tolerance(b, rtol)
    live = np.arange(n_rows)
    entered = np.full(n_rows, -1)  # the atom each row added last
    for _ in range(3 * n_atoms + 10):
        if live.size == 0:
            return x
        x_l, p_l = x[live], passive[live]
        s = least_squares_on_support(gram, b[live], p_l)
        infeasible = (p_l & (s <= 0)).any(axis=1) if non_negative else np.zeros(len(live), bool)
        if infeasible.any():
            _refuse_rounding_entries(may_enter, s, live[infeasible], entered, infeasible)
            x_bad, p_bad = x_l[infeasible], p_l[infeasible]
            _step_to_feasible(x_bad, s[infeasible], p_bad)
            x[live[infeasible]], passive[live[infeasible]] = x_bad, p_bad
        ok = live[~infeasible]
        x[ok] = s[~infeasible]
        gradient = b[ok] - x[ok] @ gram
        score = np.where(passive[ok] | ~may_enter[ok], -np.inf, gradient if non_negative else np.abs(gradient))
        best = score.argmax(axis=1)
        grows = (score[np.arange(len(ok)), best] > tol[ok]) & (passive[ok].sum(axis=1) < k)
        passive[ok[grows], best[grows]] = True
        entered[ok[grows]] = best[grows]
        live = np.concatenate([live[infeasible], ok[grows]])
    log.warning("greedy pursuit stopped at the iteration cap with %d of %d rows unconverged", live.size, n_rows)
    return x


def _swap_sets(infeasible: np.ndarray, improved: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Block principal pivoting's exchange rule: swap the whole infeasible set while the number of
    infeasible atoms keeps falling (or a budget of 3 non-improving swaps lasts); otherwise swap only
    the highest-numbered infeasible atom (Murty's rule), which guarantees termination."""
    full = improved | (budget >= 1)
    budget[~improved & full] -= 1
    budget[improved] = 3
    swap = infeasible.copy()
    single = np.flatnonzero(~full)
    if single.size:
        last = infeasible.shape[1] - 1 - infeasible[single, ::-1].argmax(axis=1)
        swap[single] = False
        swap[single, last] = True
    return swap


def nnls_gram(gram: np.ndarray, b: np.ndarray, *, allowed: np.ndarray | None = None,
              rtol: float = RTOL) -> np.ndarray:
    """Exact non-negative least squares per row: x: float64[N, n] ≥ 0 (see the module docstring).

    Block principal pivoting (Kim & Park 2011): guess the passive set, solve least squares on it, and
    exchange every atom that violates the KKT conditions (x < 0 inside, gradient > tol outside) at once,
    falling back to single exchanges when that stops reducing the violations; typically a handful of
    iterations instead of Lawson–Hanson's one per active atom. allowed: bool[N, n] or bool[n], the atoms
    that may be nonzero (None: all).
    """
    gram, b = _check(gram, b)
    n_rows, n_atoms = b.shape
    may_enter = np.ones((n_rows, n_atoms), bool) if allowed is None else np.broadcast_to(
        np.asarray(allowed, dtype=bool), (n_rows, n_atoms))
    x = np.zeros((n_rows, n_atoms))
    slack = -b  # x G − b: the KKT multipliers off the passive set
    passive = np.zeros((n_rows, n_atoms), bool)
    tol = _tolerance(b, rtol)
    fewest = np.full(n_rows, n_atoms + 1)
    budget = np.full(n_rows, 3)
    live = np.arange(n_rows)
    solve = _SupportSolver(gram)
    for _ in range(5 * n_atoms + 50):
        infeasible = np.where(passive[live], x[live] < 0, may_enter[live] & (slack[live] < -tol[live, None]))
        count = infeasible.sum(axis=1)
        live, infeasible, count = live[count > 0], infeasible[count > 0], count[count > 0]
        if live.size == 0:
            return x
        improved = count < fewest[live]
        fewest[live] = np.minimum(fewest[live], count)
        rule_budget = budget[live]
        swap = _swap_sets(infeasible, improved, rule_budget)
        budget[live] = rule_budget
        passive[live] ^= swap
        x[live] = solve(b[live], passive[live])
        slack[live] = np.where(passive[live], 0.0, x[live] @ gram - b[live])
    log.warning("NNLS stopped at the iteration cap with %d of %d rows unconverged", live.size, n_rows)
    return np.maximum(x, 0.0)


def _check(gram: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gram, b = np.asarray(gram, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if b.ndim != 2 or gram.shape != (b.shape[1], b.shape[1]):
        raise ValueError(f"gram: expected float[n, n] with b float[N, n], got {list(gram.shape)}, {list(b.shape)}")
    return gram, b


def _tolerance(b: np.ndarray, rtol: float) -> np.ndarray:
    """float64[N]: gradient tolerance per row, relative to max|b| of the row."""
    return rtol * np.maximum(np.abs(b).max(axis=1, initial=0.0), np.finfo(np.float64).tiny)


def objective(gram: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float64[N]: xᵀGx − 2 bᵀx per row = ‖y − xD‖² − ‖y‖², so lower is a better reconstruction.

    (x G) · x through a matrix product: the three-operand einsum ran unoptimised, ~15 % of a k-sparse
    re-encode of the demo's nmf-n128."""
    return ((x @ gram) * x).sum(axis=1) - 2.0 * (b * x).sum(axis=1)


def top_k_support(codes: np.ndarray, k: int) -> np.ndarray:
    """bool[N, n]: each row's k entries of largest |code| (all entries when k >= n)."""
    support = np.zeros(codes.shape, dtype=bool)
    if k >= codes.shape[1]:
        support[:] = True
        return support
    keep = np.argpartition(-np.abs(codes), k - 1, axis=1)[:, :k]
    np.put_along_axis(support, keep, True, axis=1)
    return support
