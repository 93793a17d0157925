"""Concept grounding: decile pulses with bootstrap bands, concept ranking, Spearman table with BH FDR."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from stsae.errors import StsaeError
from stsae.grounding.concepts import (
    benjamini_hochberg,
    correlate_concepts_with_morphology,
    ground_concept,
    top_concepts_by_weight,
)

L = 50


def pulses_scaled_by(activation: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pulses whose late wave grows with the activation, plus noise."""
    t = np.linspace(0, 1, L)
    gen = np.random.default_rng(seed)
    late = np.exp(-0.5 * ((t - 0.5) / 0.1) ** 2)
    base = np.exp(-0.5 * ((t - 0.2) / 0.06) ** 2)
    return (base + activation[:, None] * late + 0.05 * gen.standard_normal((len(activation), L))).astype(
        np.float32
    )


@given(st.lists(st.floats(0, 1), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_bh_q_values_match_statsmodels(p_values: list[float]) -> None:
    p = np.asarray(p_values)
    assert np.allclose(benjamini_hochberg(p), multipletests(p, method="fdr_bh")[1])


def test_bh_leaves_nan_p_values_out_of_the_count() -> None:
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(p)
    assert np.isnan(q[1])
    assert np.allclose(q[[0, 2, 3]], multipletests(p[[0, 2, 3]], method="fdr_bh")[1])


def test_top_concepts_rank_by_absolute_weight_and_skip_zeros() -> None:
    coef = np.array([0.0, -3.0, 1.0, 0.0, 2.0])
    assert top_concepts_by_weight(coef, 10).tolist() == [1, 4, 2]
    assert top_concepts_by_weight(coef, 2).tolist() == [1, 4]


def test_high_decile_pulse_shows_the_wave_the_concept_tracks() -> None:
    activation = np.random.default_rng(1).uniform(0, 1, 500)
    pulses = pulses_scaled_by(activation)
    morphology = pd.DataFrame({"late_height": pulses[:, L // 2]})
    result = ground_concept(
        3, activation, pulses, morphology, decile=0.1, n_bootstrap=100, rng=np.random.default_rng(0)
    )
    assert result.high_mean[L // 2] - result.low_mean[L // 2] > 0.7
    assert result.high_lo[L // 2] > result.low_hi[L // 2]
    assert result.morphology_diff["late_height"] > 0.7
    assert np.all(result.high_lo <= result.high_mean) and np.all(result.high_mean <= result.high_hi)


def test_windows_without_a_pulse_are_skipped() -> None:
    activation = np.linspace(0, 1, 100)
    pulses = pulses_scaled_by(activation)
    pulses[-5:] = np.nan
    result = ground_concept(
        0,
        activation,
        pulses,
        pd.DataFrame({"f": np.arange(100.0)}),
        decile=0.1,
        n_bootstrap=20,
        rng=np.random.default_rng(0),
    )
    assert np.isfinite(result.high_mean).all()
    assert result.morphology_diff["f"] == pytest.approx(np.mean(np.arange(86, 95)) - np.mean(np.arange(9)))


def test_bootstrap_bands_are_reproducible_from_the_seed() -> None:
    activation = np.random.default_rng(1).uniform(0, 1, 200)
    pulses = pulses_scaled_by(activation)
    runs = [
        ground_concept(
            0,
            activation,
            pulses,
            pd.DataFrame({"f": activation}),
            decile=0.2,
            n_bootstrap=30,
            rng=np.random.default_rng(5),
        )
        for _ in range(2)
    ]
    assert np.array_equal(runs[0].high_lo, runs[1].high_lo)


def test_correlation_table_finds_the_planted_monotone_link() -> None:
    gen = np.random.default_rng(0)
    activations = gen.uniform(0, 1, (300, 2))
    morphology = pd.DataFrame(
        {
            "linked": np.exp(activations[:, 0]) + 0.1 * gen.standard_normal(300),
            "noise": gen.standard_normal(300),
            "reason": "",
        }
    )
    table = correlate_concepts_with_morphology(activations, np.array([7, 11]), morphology)
    assert list(table.columns) == ["concept", "feature", "rho", "p", "q"]
    assert len(table) == 4
    linked = table[(table["concept"] == 7) & (table["feature"] == "linked")].iloc[0]
    assert linked["rho"] > 0.9 and linked["q"] < 1e-10
    assert (table.loc[table["feature"] == "noise", "q"] > 0.01).all()


def test_constant_concept_gives_nan_not_an_error() -> None:
    morphology = pd.DataFrame({"f": np.arange(20.0)})
    table = correlate_concepts_with_morphology(np.zeros((20, 1)), np.array([0]), morphology)
    assert table[["rho", "p", "q"]].isna().all(axis=None)


def test_too_few_windows_for_a_decile_is_a_user_error_naming_the_key() -> None:
    activation = np.linspace(0, 1, 10)
    with pytest.raises(StsaeError, match=r"grounding\.max_windows"):
        ground_concept(
            0,
            activation,
            pulses_scaled_by(activation),
            pd.DataFrame({"f": activation}),
            decile=0.1,
            n_bootstrap=5,
            rng=np.random.default_rng(0),
        )
