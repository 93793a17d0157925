"""Seed stability by Hungarian matching: permuted copies match perfectly; random ones match the null."""

from __future__ import annotations

import numpy as np
import pytest

from stsae.eval.stability import (
    analytical_null_mean_cos,
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
