"""Concept grounding: high / lowest-active / silent pulses with patient-bootstrap bands, ranking, Spearman + BH."""

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
    cluster_bootstrap_band,
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


def one_patient_each(n: int) -> np.ndarray:
    return np.array([f"p{i}" for i in range(n)])


def ground(activation: np.ndarray, pulses: np.ndarray, morphology: pd.DataFrame, patients: np.ndarray | None = None,
           *, decile: float = 0.1, n_bootstrap: int = 50, seed: int = 0):
    patients = one_patient_each(len(activation)) if patients is None else patients
    return ground_concept(3, activation, pulses, morphology, patients, decile=decile, n_bootstrap=n_bootstrap,
                          rng=np.random.default_rng(seed))


def test_high_decile_pulse_shows_the_wave_the_concept_tracks() -> None:
    activation = np.random.default_rng(1).uniform(0, 1, 500)
    pulses = pulses_scaled_by(activation)
    result = ground(activation, pulses, pd.DataFrame({"late_height": pulses[:, L // 2]}), n_bootstrap=100)
    assert result.high.mean[L // 2] - result.low.mean[L // 2] > 0.7
    assert result.high.lo[L // 2] > result.low.hi[L // 2]
    assert result.morphology_diff["late_height"] > 0.7
    assert np.all(result.high.lo <= result.high.mean) and np.all(result.high.mean <= result.high.hi)


def test_windows_without_a_pulse_are_skipped_and_morphology_diff_is_a_median_difference() -> None:
    activation = np.linspace(0, 1, 100)  # window 0 is silent, 1-94 active with a pulse
    pulses = pulses_scaled_by(activation)
    pulses[-5:] = np.nan
    result = ground(activation, pulses, pd.DataFrame({"f": np.arange(100.0)}), n_bootstrap=20)
    assert np.isfinite(result.high.mean).all()
    assert sorted(result.high.rows.tolist()) == list(range(86, 95))
    assert sorted(result.low.rows.tolist()) == list(range(1, 10))
    assert result.morphology_diff["f"] == pytest.approx(np.median(np.arange(86, 95)) - np.median(np.arange(1, 10)))


def mostly_silent_cohort(seed: int = 0, n_patients: int = 20, per_patient: int = 50):
    """Windows ordered by patient; the concept is silent in 70 % of them, at random."""
    gen = np.random.default_rng(seed)
    n = n_patients * per_patient
    patients = np.repeat([f"p{i:02d}" for i in range(n_patients)], per_patient)
    activation = np.where(gen.random(n) < 0.7, 0.0, gen.uniform(0.1, 1.0, n))
    return activation, pulses_scaled_by(activation, seed), patients


def test_low_group_is_the_lowest_active_decile_not_the_first_patients_silent_windows() -> None:
    activation, pulses, patients = mostly_silent_cohort()
    n_end = len(activation) // 10
    old_low = np.argsort(activation, kind="stable")[:n_end]  # the previous rule: ties by window order
    assert len(set(patients[old_low])) <= 4  # of 20: the first patients only
    result = ground(activation, pulses, pd.DataFrame({"f": activation}), patients)
    active = activation[activation > 0]
    assert len(result.low.rows) == int(0.1 * len(active))
    assert np.all(activation[result.low.rows] > 0)
    assert activation[result.low.rows].max() <= np.sort(active)[len(result.low.rows) - 1]
    assert np.all(activation[result.silent.rows] == 0) and len(result.silent.rows) == n_end
    assert len(set(patients[result.silent.rows])) == 20  # spread over every patient
    assert not set(result.low.rows) & set(result.high.rows)


def test_a_sparse_concepts_high_and_low_groups_hold_only_windows_where_it_fires() -> None:
    gen = np.random.default_rng(2)
    activation = np.where(gen.random(1000) < 0.05, gen.uniform(0.1, 1.0, 1000), 0.0)
    old_high = np.argsort(activation, kind="stable")[-100:]  # the previous rule: top decile of all windows
    assert np.mean(activation[old_high] > 0) < 0.6
    result = ground(activation, pulses_scaled_by(activation), pd.DataFrame({"f": activation}))
    n_active = int((activation > 0).sum())
    assert len(result.high.rows) == len(result.low.rows) == max(2, n_active // 10)
    assert np.all(activation[result.high.rows] >= np.sort(activation)[-len(result.high.rows)])
    assert np.all(activation[result.low.rows] > 0)


def test_silent_sample_is_drawn_from_the_seed_not_from_window_order() -> None:
    activation, pulses, patients = mostly_silent_cohort()
    runs = [ground(activation, pulses, pd.DataFrame({"f": activation}), patients, seed=s) for s in (0, 0, 1)]
    assert np.array_equal(runs[0].silent.rows, runs[1].silent.rows)
    assert not np.array_equal(runs[0].silent.rows, runs[2].silent.rows)


def test_a_concept_that_never_rests_has_a_nan_silent_pulse() -> None:
    activation = np.random.default_rng(1).uniform(0.1, 1, 200)
    result = ground(activation, pulses_scaled_by(activation), pd.DataFrame({"f": activation}))
    assert len(result.silent.rows) == 0 and np.isnan(result.silent.mean).all()
    assert np.isnan(result.morphology_diff_silent["f"])


def clustered_pulses(seed: int, n_patients: int = 8, per_patient: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Pulses = patient offset (SD 0.3) + window noise (SD 0.05); the population mean pulse is 0."""
    gen = np.random.default_rng(seed)
    offsets = np.repeat(gen.normal(0, 0.3, (n_patients, 3)), per_patient, axis=0)
    pulses = (offsets + gen.normal(0, 0.05, offsets.shape)).astype(np.float32)
    return pulses, np.repeat(np.arange(n_patients), per_patient)


def test_patient_bootstrap_band_covers_the_population_mean_where_a_window_bootstrap_does_not() -> None:
    covered = {"patients": 0, "windows": 0}
    for seed in range(40):
        pulses, patients = clustered_pulses(seed)
        rows = np.arange(len(pulses))
        for name, clusters in (("patients", patients), ("windows", rows)):
            band = cluster_bootstrap_band(pulses, clusters, rows, 200, np.random.default_rng(seed))
            covered[name] += bool(band.lo[0] <= 0 <= band.hi[0])
    assert covered["patients"] / 40 >= 0.8
    assert covered["windows"] / 40 <= 0.5


def test_bootstrap_bands_are_reproducible_from_the_seed() -> None:
    activation = np.random.default_rng(1).uniform(0, 1, 200)
    pulses = pulses_scaled_by(activation)
    runs = [ground(activation, pulses, pd.DataFrame({"f": activation}), decile=0.2, seed=5) for _ in range(2)]
    assert np.array_equal(runs[0].high.lo, runs[1].high.lo)


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
    table = correlate_concepts_with_morphology(activations, np.array([7, 11]), morphology, one_patient_each(300))
    assert list(table.columns) == ["concept", "feature", "rho", "p", "q", "n_patients"]
    assert len(table) == 4 and (table["n_patients"] == 300).all()
    linked = table[(table["concept"] == 7) & (table["feature"] == "linked")].iloc[0]
    assert linked["rho"] > 0.9 and linked["q"] < 1e-10
    assert (table.loc[table["feature"] == "noise", "q"] > 0.01).all()


def test_patient_mean_spearman_keeps_false_positives_near_alpha_where_window_level_does_not() -> None:
    """Concept and feature each carry an independent patient effect: no link, but clustered windows."""
    rejected = {"patients": 0, "windows": 0}
    n_patients, per_patient, runs = 12, 30, 60
    for seed in range(runs):
        gen = np.random.default_rng(seed)
        patients = np.repeat(np.arange(n_patients), per_patient)
        activation = gen.normal(0, 1, n_patients)[patients] + gen.normal(0, 0.5, len(patients))
        feature = gen.normal(0, 1, n_patients)[patients] + gen.normal(0, 0.5, len(patients))
        morphology = pd.DataFrame({"f": feature})
        for name, clusters in (("patients", patients), ("windows", np.arange(len(patients)))):
            table = correlate_concepts_with_morphology(activation[:, None], np.array([0]), morphology, clusters)
            rejected[name] += bool(table["p"].iloc[0] < 0.05)
    assert rejected["patients"] / runs <= 0.12
    assert rejected["windows"] / runs >= 0.4


def test_correlation_uses_patient_means_of_the_windows_with_the_feature() -> None:
    patients = np.repeat(np.arange(5), 2)
    activation = np.arange(10.0)
    feature = np.array([1.0, np.nan, 2, 2, 3, 3, 5, 5, 4, 4])
    table = correlate_concepts_with_morphology(activation[:, None], np.array([0]), pd.DataFrame({"f": feature}),
                                               patients)
    assert table["n_patients"].iloc[0] == 5
    assert table["rho"].iloc[0] == pytest.approx(0.9)  # patient means 0, 2.5, 4.5, 6.5, 8.5 vs 1, 2, 3, 5, 4


def test_constant_concept_gives_nan_not_an_error() -> None:
    morphology = pd.DataFrame({"f": np.arange(20.0)})
    table = correlate_concepts_with_morphology(np.zeros((20, 1)), np.array([0]), morphology, one_patient_each(20))
    assert table[["rho", "p", "q"]].isna().all(axis=None)


def test_too_few_windows_for_a_decile_is_a_user_error_naming_the_key() -> None:
    activation = np.linspace(0, 1, 10)
    with pytest.raises(StsaeError, match=r"grounding\.max_windows"):
        ground(activation, pulses_scaled_by(activation), pd.DataFrame({"f": activation}), n_bootstrap=5)
