"""Batched active-set solver: exact NNLS (against scipy), OMP, k-sparse NNLS, support restrictions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import nnls

from stsae.models.sparse_coding import active_set_solve, objective, top_k_support


def _problem(seed: int, n_atoms: int, dim: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    return gen.standard_normal((n_atoms, dim)), gen.standard_normal((n_rows, dim))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(1, 12), extra_dim=st.integers(0, 20),
       n_rows=st.integers(1, 6))
def test_nnls_equals_scipy_nnls(seed: int, n_atoms: int, extra_dim: int, n_rows: int) -> None:
    atoms, y = _problem(seed, n_atoms, n_atoms + extra_dim, n_rows)  # full column rank: unique optimum
    x = active_set_solve(atoms @ atoms.T, y @ atoms.T, non_negative=True)
    reference = np.stack([nnls(atoms.T, row)[0] for row in y])
    np.testing.assert_allclose(x, reference, atol=1e-8 * max(1.0, np.abs(reference).max()))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_atoms=st.integers(2, 16), dim=st.integers(1, 10))
def test_nnls_meets_kkt_conditions_when_atoms_are_dependent(seed: int, n_atoms: int, dim: int) -> None:
    atoms, y = _problem(seed, n_atoms, dim, 4)  # more atoms than dimensions: many optima, one objective
    gram, b = atoms @ atoms.T, y @ atoms.T
    x = active_set_solve(gram, b, non_negative=True)
    gradient = b - x @ gram
    assert (x >= 0).all()
    assert (gradient <= 1e-8 * max(1.0, np.abs(b).max())).all()
    reference = np.stack([nnls(atoms.T, row)[0] for row in y])
    np.testing.assert_allclose(objective(gram, b, x), objective(gram, b, reference), atol=1e-8)


def test_omp_on_orthonormal_atoms_keeps_the_k_largest_projections() -> None:
    atoms = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 16)))[0].T  # 16 orthonormal rows
    y = np.random.default_rng(1).standard_normal((50, 64))
    b = y @ atoms.T
    x = active_set_solve(atoms @ atoms.T, b, non_negative=False, max_active=5)
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
    x = active_set_solve(atoms @ atoms.T, y @ atoms.T, non_negative=False, max_active=3)
    np.testing.assert_array_equal(x != 0, support)


def test_k_sparse_nnls_recovers_a_planted_non_negative_support() -> None:
    atoms, y, support = _planted(non_negative=True)
    x = active_set_solve(atoms @ atoms.T, y @ atoms.T, non_negative=True, max_active=3)
    np.testing.assert_array_equal(x > 0, support)
    assert (x >= 0).all()


def test_max_active_caps_the_nonzeros_per_row() -> None:
    atoms, y = _problem(3, 30, 60, 20)
    x = active_set_solve(atoms @ atoms.T, y @ atoms.T, non_negative=True, max_active=4)
    assert (np.count_nonzero(x, axis=1) <= 4).all() and (np.count_nonzero(x, axis=1) > 0).all()


def test_allowed_atoms_bound_the_support_and_refit_it_exactly() -> None:
    atoms, y = _problem(4, 10, 40, 8)
    allowed = np.zeros(10, dtype=bool)
    allowed[[1, 4, 7]] = True
    x = active_set_solve(atoms @ atoms.T, y @ atoms.T, non_negative=False, allowed=allowed)
    assert not x[:, ~allowed].any()
    np.testing.assert_allclose(x[:, allowed], np.linalg.lstsq(atoms[allowed].T, y.T, rcond=None)[0].T, atol=1e-10)
