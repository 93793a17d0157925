"""Seed stability: do two trainings find the same atoms? Hungarian matching of decoder dictionaries.

For dictionaries A, B (float32[K, 512], unit-norm rows) the cosine matrix C = A Bᵀ is matched
one-to-one by `scipy.optimize.linear_sum_assignment` (maximising Σ C); the matched cosines summarise
agreement: their mean and the fractions above 0.7 and 0.9. Over several dictionaries every pair is
matched and the matched cosines are pooled.

Only live atoms are matched (atoms that fire on at least one evaluated window): a dead atom carries
no concept, and its cosine would only dilute or inflate the mean. The two live sets may differ in
size; the assignment then matches min(K_a, K_b) pairs.

Data-aware null (`covariance_null`, and the evaluate stage's untrained data-initialised dictionaries):
the ST-SAE initialises its atoms from train rows of embeddings whose effective rank is ≈ 12, so two
*untrained* dictionaries already agree far above random unit vectors (README "Measured"). A trained
model's stability means something only above that null.

Isotropic null: independent random unit dictionaries of the same K and d. For large K the cost of the edge at
a vertex of the optimal random assignment, in tail-probability units x = K·P(C > c), has the limit
density (Aldous 2001, the ζ(2) limit)  g(x) = e^{-x} (e^{-x} − 1 + x) / (1 − e^{-x})²,  and the cosine
of two random unit vectors in d dimensions satisfies (1 + c)/2 ~ Beta((d−1)/2, (d−1)/2). Hence

    E[matched cos] ≈ ∫ g(x) · Q(x / K) dx,   Q(p) = 2·Beta.isf(p) − 1,

which `analytical_null_mean_cos` evaluates (tests/test_stability.py holds it to simulation).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats
from scipy.optimize import linear_sum_assignment

THRESHOLDS = (0.7, 0.9)


@dataclass
class StabilityResult:
    """mean_cos: mean matched cosine; frac_07 / frac_09: fraction of matched cosines above 0.7 / 0.9."""

    mean_cos: float
    frac_07: float
    frac_09: float
    n_pairs: int


def _check_dictionary(d: np.ndarray, name: str) -> np.ndarray:
    if d.ndim != 2:
        raise ValueError(f"{name}: expected float32[K, D], got shape {list(d.shape)}")
    norms = np.linalg.norm(d, axis=1, keepdims=True)
    return (d / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def matched_cosines(a: np.ndarray, b: np.ndarray, sign_invariant: bool = False) -> np.ndarray:
    """Cosines of the Hungarian-matched atom pairs of a: float[K_a, D], b: float[K_b, D] -> float32[min K].

    sign_invariant: match on |cos| (PCA/ICA atoms have arbitrary sign; ST-SAE atoms do not).
    Rows are re-normalised here, so any non-zero dictionaries can be passed.
    """
    a, b = _check_dictionary(a, "a"), _check_dictionary(b, "b")
    if a.shape[1] != b.shape[1] or not (len(a) and len(b)):
        raise ValueError(f"dictionaries need atoms of one dimension, got {list(a.shape)} and {list(b.shape)}")
    cos = a @ b.T
    if sign_invariant:
        cos = np.abs(cos)
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return cos[rows, cols]


def _summarise(matched: list[np.ndarray], n_pairs: int) -> StabilityResult:
    values = np.concatenate(matched)
    return StabilityResult(float(values.mean()), float((values > THRESHOLDS[0]).mean()),
                           float((values > THRESHOLDS[1]).mean()), n_pairs)


def seed_stability(dictionaries: list[np.ndarray], sign_invariant: bool = False) -> StabilityResult:
    """Pooled matched cosines over every pair of dictionaries (at least two, all float[K, D])."""
    if len(dictionaries) < 2:
        raise ValueError(f"seed stability needs at least two dictionaries, got {len(dictionaries)}")
    pairs = list(itertools.combinations(range(len(dictionaries)), 2))
    matched = [matched_cosines(dictionaries[i], dictionaries[j], sign_invariant) for i, j in pairs]
    return _summarise(matched, len(pairs))


def stability_against(reference: np.ndarray, others: list[np.ndarray],
                      sign_invariant: bool = False) -> StabilityResult:
    """Pooled matched cosines of one dictionary against each of `others` (the row of one model)."""
    if not others:
        raise ValueError("stability_against needs at least one other dictionary")
    return _summarise([matched_cosines(reference, o, sign_invariant) for o in others], len(others))


def random_unit_dictionary(n_atoms: int, dim: int, generator: np.random.Generator) -> np.ndarray:
    """float32[n_atoms, dim] with rows uniform on the unit sphere."""
    d = generator.standard_normal((n_atoms, dim)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def random_null(n_atoms: int, dim: int, generator: np.random.Generator,
                sign_invariant: bool = False) -> StabilityResult:
    """Matched-cosine summary of two independent random unit dictionaries (the empirical null)."""
    a = random_unit_dictionary(n_atoms, dim, generator)
    b = random_unit_dictionary(n_atoms, dim, generator)
    return _summarise([matched_cosines(a, b, sign_invariant)], 1)


def covariance_null(covariance: np.ndarray, n_atoms: tuple[int, int], generator: np.random.Generator,
                    sign_invariant: bool = False) -> StabilityResult:
    """Matched-cosine summary of two dictionaries of Gaussian draws N(0, covariance) (unit-normed rows).

    covariance: float[D, D] of the train embeddings; n_atoms: the sizes of the two dictionaries (the
    live-atom counts of the comparison it is a null for). Atoms drawn from the data's own covariance
    share its few dominant directions, as data-initialised atoms do."""
    eig, vecs = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    root = vecs * np.sqrt(np.clip(eig, 0.0, None))
    a, b = (generator.standard_normal((n, len(eig))) @ root.T for n in n_atoms)
    return _summarise([matched_cosines(a, b, sign_invariant)], 1)


def _assignment_edge_density(x: np.ndarray | float) -> np.ndarray | float:
    """Aldous' limit density of the optimal-assignment edge cost at a vertex (mean ζ(2))."""
    em = np.exp(-x)
    return em * (em - 1 + x) / (-np.expm1(-x)) ** 2


def analytical_null_mean_cos(n_atoms: int, dim: int, sign_invariant: bool = False) -> float:
    """Large-K expectation of the mean matched cosine of two random unit dictionaries (see module doc)."""
    if n_atoms < 1 or dim < 2:
        raise ValueError(f"need n_atoms >= 1 and dim >= 2, got {n_atoms}, {dim}")
    half = (dim - 1) / 2
    tail_scale = 2.0 if sign_invariant else 1.0

    def quantile(x: float) -> float:
        p = min(x / (n_atoms * tail_scale), 1.0)
        return 2.0 * stats.beta.isf(p, half, half) - 1.0

    upper = min(float(n_atoms), 60.0)
    value, _ = integrate.quad(lambda x: _assignment_edge_density(x) * quantile(x), 0.0, upper, limit=200)
    return float(value)
