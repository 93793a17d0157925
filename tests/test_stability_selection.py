"""Stability selection picks the truly informative features of a planted linear problem."""

from __future__ import annotations

import numpy as np

from stsae.aging.stability_selection import stability_selection


def planted_problem(n: int = 200, k: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, k))
    y = 3 * x[:, 0] - 2 * x[:, 4] + 1.5 * x[:, 9] + gen.standard_normal(n)
    return x, y, np.arange(n)


def test_selects_exactly_the_informative_features() -> None:
    x, y, groups = planted_problem()
    result = stability_selection(
        x, y, groups, alpha=0.2, l1_ratio=1.0, rounds=50, threshold=0.8, rng=np.random.default_rng(0)
    )
    assert result.selected.tolist() == [0, 4, 9]


def test_frequency_is_a_fraction_per_feature() -> None:
    x, y, groups = planted_problem()
    result = stability_selection(
        x, y, groups, alpha=0.2, l1_ratio=1.0, rounds=20, threshold=0.8, rng=np.random.default_rng(0)
    )
    assert result.frequency.shape == (x.shape[1],)
    assert np.all((result.frequency >= 0) & (result.frequency <= 1))
    assert np.all(result.frequency[[0, 4, 9]] == 1)


def test_same_seed_gives_same_frequencies() -> None:
    x, y, groups = planted_problem()
    runs = [
        stability_selection(
            x, y, groups, alpha=0.5, l1_ratio=0.5, rounds=10, threshold=0.6, rng=np.random.default_rng(7)
        ).frequency
        for _ in range(2)
    ]
    assert np.array_equal(*runs)
