"""Seed stability by Hungarian matching: permuted copies match perfectly; random ones match the null."""

from __future__ import annotations

import numpy as np
import pytest

from stsae.eval.stability import (
    analytical_null_mean_cos,
    covariance_null,
    matched_cosines,
    random_null,
    random_unit_dictionary,
    seed_stability,
    stability_against,
)


def test_permuted_copy_of_a_dictionary_is_perfectly_stable() -> None:
    gen = np.random.default_rng(0)
    d = random_unit_dictionary(256, 512, gen)
    result = seed_stability([d, d[gen.permutation(256)], d[gen.permutation(256)]])
    assert result.mean_cos == pytest.approx(1.0, abs=1e-5)
    assert result.frac_09 == 1.0 and result.n_pairs == 3


def test_sign_flips_only_match_when_sign_invariant() -> None:
    d = random_unit_dictionary(64, 512, np.random.default_rng(1))
    assert matched_cosines(d, -d, sign_invariant=True).min() == pytest.approx(1.0, abs=1e-5)
    assert matched_cosines(d, -d).max() < 0.5


@pytest.mark.parametrize("n_atoms", [128, 1024])
def test_random_dictionaries_match_the_analytical_null(n_atoms: int) -> None:
    empirical = random_null(n_atoms, 512, np.random.default_rng(2))
    assert empirical.mean_cos == pytest.approx(analytical_null_mean_cos(n_atoms, 512), rel=0.05)
    assert empirical.frac_07 == 0.0


def test_analytical_null_grows_with_dictionary_size() -> None:
    values = [analytical_null_mean_cos(k, 512) for k in (16, 256, 4096)]
    assert values == sorted(values) and values[-1] < 0.2


def test_stability_against_pools_every_other_dictionary() -> None:
    gen = np.random.default_rng(3)
    d = random_unit_dictionary(32, 512, gen)
    noisy = d + 0.001 * gen.standard_normal(d.shape).astype(np.float32)
    result = stability_against(d, [d[::-1], noisy])
    assert result.n_pairs == 2 and result.mean_cos > 0.999


def test_one_dictionary_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least two"):
        seed_stability([np.eye(3, dtype=np.float32)])


def _low_rank_rows(n: int, rank: int = 8, seed: int = 0) -> np.ndarray:
    """float64[n, 512] rows with a decaying spectrum of `rank` directions (like PaPaGei embeddings)."""
    gen = np.random.default_rng(seed)
    basis = np.linalg.qr(gen.standard_normal((512, rank)))[0].T * (0.7 ** np.arange(rank))[:, None]
    return gen.standard_normal((n, rank)) @ basis + 0.01 * gen.standard_normal((n, 512))


def test_dictionaries_of_data_rows_beat_the_isotropic_null_without_learning_anything() -> None:
    """Two dictionaries that are nothing but different random data rows (what an untrained,
    data-initialised SAE is) score far above random unit vectors; the covariance null scores the same,
    so only a stability above it says that training found the same atoms twice."""
    rows = _low_rank_rows(4000)
    gen = np.random.default_rng(1)
    a, b = (rows[gen.choice(4000, 128, replace=False)] for _ in range(2))
    untrained = stability_against(a, [b]).mean_cos
    isotropic = random_null(128, 512, np.random.default_rng(2)).mean_cos
    data_null = covariance_null(np.cov(rows, rowvar=False), (128, 128), np.random.default_rng(3)).mean_cos
    assert isotropic < 0.15 and untrained > isotropic + 0.4
    assert data_null == pytest.approx(untrained, abs=0.08)


def test_live_atom_sets_of_different_sizes_match_min_size_pairs() -> None:
    gen = np.random.default_rng(4)
    d = random_unit_dictionary(40, 512, gen)
    matched = matched_cosines(d[:25], d[gen.permutation(40)])
    assert len(matched) == 25 and matched.min() == pytest.approx(1.0, abs=1e-5)
