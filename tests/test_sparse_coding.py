"""Batched active-set solver: exact NNLS (against scipy), OMP, k-sparse NNLS, support restrictions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from stsae.models.sparse_coding import (
    greedy_pursuit,
    least_squares_off_support,
    least_squares_on_support,
    nnls_gram,
    objective,
    top_k_support,
)

# scipy's reference nnls stops at 3n iterations by default; scipy 1.13 (our lowest) needs more on the
# degenerate (more atoms than dimensions) problems hypothesis finds.
REFERENCE_MAXITER = 10_000


def _problem(seed: int, n_atoms: int, dim: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    return gen.standard_normal((n_atoms, dim)), gen.standard_normal((n_rows, dim))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 12), extra_dim=st.integers(0, 20),
       n_rows=st.integers(1, 6))
def test_nnls_equals_scipy_nnls(seed: int, n_atoms: int, extra_dim: int, n_rows: int) -> None:
    atoms, y = _problem(seed, n_atoms, n_atoms + extra_dim, n_rows)  # full column rank: unique optimum
    x = nnls_gram(atoms @ atoms.T, y @ atoms.T)
    reference = np.stack([nnls(atoms.T, row, maxiter=REFERENCE_MAXITER)[0] for row in y])
    np.testing.assert_allclose(x, reference, atol=1e-8 * max(1.0, np.abs(reference).max()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(2, 16), dim=st.integers(1, 10))
def test_nnls_meets_kkt_conditions_when_atoms_are_dependent(seed: int, n_atoms: int, dim: int) -> None:
    atoms, y = _problem(seed, n_atoms, dim, 4)  # more atoms than dimensions: many optima, one objective
    gram, b = atoms @ atoms.T, y @ atoms.T
    x = nnls_gram(gram, b)
    gradient = b - x @ gram
    tolerance = 1e-8 * max(1.0, np.abs(b).max())
    # KKT of this convex problem, which certify a global optimum without a reference solver (scipy 1.13's
    # nnls, our lowest, stops short on these degenerate problems): feasibility, no descent direction into
    # the feasible set, and complementary slackness.
    assert (x >= 0).all()
    assert (gradient <= tolerance).all()
    assert (np.abs(gradient[x > 0]) <= tolerance).all()


def test_omp_on_orthonormal_atoms_keeps_the_k_largest_projections() -> None:
    atoms = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 16)))[0].T  # 16 orthonormal rows
    y = np.random.default_rng(1).standard_normal((50, 64))
    b = y @ atoms.T
    x = greedy_pursuit(atoms @ atoms.T, b, 5, non_negative=False)
    np.testing.assert_allclose(x, np.where(top_k_support(b, 5), b, 0.0), atol=1e-12)


def _planted(non_negative: bool, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coherent-free random unit atoms float[40, 128], rows with k planted atoms: (atoms, y, support)."""
    gen = np.random.default_rng(seed)
    atoms = gen.standard_normal((40, 128))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    support = top_k_support(gen.random((30, 40)), k)
    magnitude = gen.uniform(1.0, 2.0, (30, 40)) * (1 if non_negative else gen.choice([-1, 1], (30, 40)))
    return atoms, np.where(support, magnitude, 0.0) @ atoms, support


def test_omp_recovers_a_planted_signed_support() -> None:
    atoms, y, support = _planted(non_negative=False)
    x = greedy_pursuit(atoms @ atoms.T, y @ atoms.T, 3, non_negative=False)
    np.testing.assert_array_equal(x != 0, support)


def test_k_sparse_nnls_recovers_a_planted_non_negative_support() -> None:
    atoms, y, support = _planted(non_negative=True)
    x = greedy_pursuit(atoms @ atoms.T, y @ atoms.T, 3, non_negative=True)
    np.testing.assert_array_equal(x > 0, support)
    assert (x >= 0).all()


def test_max_active_caps_the_nonzeros_per_row() -> None:
    atoms, y = _problem(3, 30, 60, 20)
    x = greedy_pursuit(atoms @ atoms.T, y @ atoms.T, 4, non_negative=True)
    assert (np.count_nonzero(x, axis=1) <= 4).all() and (np.count_nonzero(x, axis=1) > 0).all()


def test_nnls_restricted_to_allowed_atoms_equals_scipy_on_those_atoms() -> None:
    atoms, y = _problem(4, 10, 40, 8)
    allowed = np.zeros(10, dtype=bool)
    allowed[[1, 4, 7]] = True
    x = nnls_gram(atoms @ atoms.T, y @ atoms.T, allowed=allowed)
    assert not x[:, ~allowed].any()
    reference = np.stack([nnls(atoms[allowed].T, row, maxiter=REFERENCE_MAXITER)[0] for row in y])
    np.testing.assert_allclose(x[:, allowed], reference, atol=1e-10)


def test_least_squares_on_a_support_is_the_restricted_lstsq() -> None:
    atoms, y = _problem(5, 10, 40, 8)
    support = np.zeros((8, 10), dtype=bool)
    support[:, [0, 3]] = True
    support[::2, 9] = True
    x = least_squares_on_support(atoms @ atoms.T, y @ atoms.T, support)
    assert not x[~support].any()
    for row in range(8):
        expected = np.linalg.lstsq(atoms[support[row]].T, y[row], rcond=None)[0]
        np.testing.assert_allclose(x[row, support[row]], expected, atol=1e-10)


def test_solving_through_the_complement_equals_solving_on_the_support() -> None:
    atoms, y = _problem(6, 12, 40, 30)
    gram = atoms @ atoms.T
    support = np.random.default_rng(7).random((30, 12)) < 0.8
    np.testing.assert_allclose(least_squares_off_support(np.linalg.inv(gram), y @ atoms.T, ~support),
                               least_squares_on_support(gram, y @ atoms.T, support), atol=1e-10)


def test_nnls_with_most_atoms_active_equals_scipy() -> None:
    """Many coherent atoms, most of them active: the regime where the complement form is used."""
    gen = np.random.default_rng(8)
    atoms = np.abs(gen.standard_normal((40, 60))) + 0.5
    y = np.abs(gen.standard_normal((25, 60))) * 3
    x = nnls_gram(atoms @ atoms.T, y @ atoms.T)
    reference = np.stack([nnls(atoms.T, row, maxiter=REFERENCE_MAXITER)[0] for row in y])
    np.testing.assert_allclose(x, reference, atol=1e-7 * np.abs(reference).max())


def test_objective_is_squared_error_minus_the_targets_energy() -> None:
    atoms, y = _problem(3, 7, 11, 5)
    x = np.random.default_rng(4).standard_normal((5, 7))
    expected = ((y - x @ atoms) ** 2).sum(axis=1) - (y**2).sum(axis=1)
    np.testing.assert_allclose(objective(atoms @ atoms.T, y @ atoms.T, x), expected, rtol=1e-10, atol=1e-10)
