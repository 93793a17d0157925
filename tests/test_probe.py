"""Patient-grouped probes (cross-validated, and fit on train / scored on held-out patients), the
age+sex-adjusted phenotype probes and single-concept recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from stsae.eval import probe as probe_module
from stsae.eval.probe import (
    ProbeSet,
    RidgePath,
    adjusted_phenotypes,
    age_sex_scores,
    available_factors,
    binary_labels,
    bootstrap_auroc_difference,
    classification_probe,
    grouped_folds,
    probe_all,
    probe_heldout,
    regression_probe,
    ridge_oof_predictions,
    single_concept_recovery,
    single_concepts,
    single_concepts_heldout,
    weighted_aurocs,
)

GEN = np.random.default_rng(0)
GROUPS = np.repeat([f"p{i}" for i in range(20)], 10)


def _r2(x: np.ndarray, y: np.ndarray, groups: np.ndarray = GROUPS, folds: int = 5) -> float:
    return probe_all(x, {"f": ("r2", y)}, groups, folds)["f"].value


def test_folds_never_put_a_test_patient_in_training() -> None:
    folds = grouped_folds(GROUPS, 5)
    assert len(folds) == 5
    for train_idx, test_idx in folds:
        assert set(GROUPS[train_idx]).isdisjoint(GROUPS[test_idx])
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(len(GROUPS)))


def test_probe_fits_see_only_training_patients(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = probe_module.grouped_folds

    def recording(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
        folds = real(groups, n_folds)
        seen.extend(folds)
        return folds

    monkeypatch.setattr(probe_module, "grouped_folds", recording)
    x = GEN.standard_normal((200, 4))
    _r2(x, x[:, 0], folds=4)
    assert seen and all(set(GROUPS[a]).isdisjoint(GROUPS[b]) for a, b in seen)


def test_regression_probe_recovers_a_linear_factor() -> None:
    x = GEN.standard_normal((200, 6))
    assert _r2(x, x @ np.arange(6.0) + 0.1 * GEN.standard_normal(200)) > 0.95


def _patient_memorisation_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every patient has its own feature fingerprint and its own label, unrelated across patients:
    windows of a patient predict each other, but nothing generalises to a new patient."""
    gen = np.random.default_rng(0)
    patients = np.repeat(np.arange(80), 12)
    x = 2.0 * gen.standard_normal((80, 200))[patients] + gen.standard_normal((len(patients), 200))
    y = gen.standard_normal(80)[patients] + 0.1 * gen.standard_normal(len(patients))
    return x, y, patients.astype(str)


def test_penalty_is_chosen_across_patients_not_across_windows() -> None:
    x, y, groups = _patient_memorisation_data()
    assert _r2(x, y, groups) > -0.1


def test_window_level_penalty_choice_overfits_the_same_data() -> None:
    """The failure the grouped choice fixes: RidgeCV's window-level leave-one-out picks a tiny
    penalty here, so the same outer grouped CV scores far below zero."""
    x, y, groups = _patient_memorisation_data()
    pred = cross_val_predict(RidgeCV(alphas=np.logspace(-3, 4, 8)), x, y, groups=groups, cv=GroupKFold(5))
    assert 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() < -0.5


def test_leave_one_patient_out_errors_equal_explicit_refits() -> None:
    x = GEN.standard_normal((60, 8)) + 5.0
    y = np.column_stack([x @ GEN.standard_normal(8), GEN.standard_normal(60)])
    groups = np.repeat(np.arange(6), 10)
    path = RidgePath(x, x.T @ x, y)
    expected = np.zeros((len(path.alphas), 2))
    for a, alpha in enumerate(path.alphas):
        for g in range(6):
            out = groups == g
            fit = Ridge(alpha=alpha).fit(x[~out], y[~out])
            expected[a] += ((y[out] - fit.predict(x[out])) ** 2).sum(axis=0)
    np.testing.assert_allclose(path.logo_squared_error(groups), expected, rtol=1e-6)


def test_path_predictions_equal_sklearn_ridge_with_intercept() -> None:
    x = GEN.standard_normal((80, 5)) * [1, 10, 0.1, 3, 1] + 2.0
    y = x @ GEN.standard_normal(5) + GEN.standard_normal(80)
    path = RidgePath(x, x.T @ x, y[:, None])
    x_new = GEN.standard_normal((7, 5))
    expected = Ridge(alpha=path.alphas[3]).fit(x, y).predict(x_new)
    np.testing.assert_allclose(path.predict(x_new, np.array([3]))[:, 0], expected, rtol=1e-8)


def test_sparse_and_dense_paths_give_the_same_predictions(monkeypatch: pytest.MonkeyPatch) -> None:
    codes = np.where(GEN.random((200, 30)) < 0.05, GEN.exponential(1.0, (200, 30)), 0.0)
    y = np.column_stack([codes @ GEN.standard_normal(30), GEN.standard_normal(200)])
    monkeypatch.setattr(probe_module, "SPARSE_DENSITY", 1.0)
    as_sparse = ridge_oof_predictions(codes, y, GROUPS, 5)
    monkeypatch.setattr(probe_module, "SPARSE_DENSITY", 0.0)
    np.testing.assert_allclose(ridge_oof_predictions(codes, y, GROUPS, 5), as_sparse, rtol=1e-7, atol=1e-9)


def test_dead_columns_do_not_change_the_probe() -> None:
    x = GEN.standard_normal((200, 6))
    y = x @ np.arange(6.0) + GEN.standard_normal(200)
    padded = np.column_stack([x, np.zeros((200, 3)), np.full((200, 2), 4.0)])
    np.testing.assert_allclose(ridge_oof_predictions(padded, y[:, None], GROUPS, 5),
                               ridge_oof_predictions(x, y[:, None], GROUPS, 5), rtol=1e-9)


def test_factor_known_on_some_patients_is_probed_on_those() -> None:
    x = GEN.standard_normal((200, 4))
    partial = np.where(np.arange(200) < 120, x[:, 1], np.nan)
    scores = probe_all(x, {"full": ("r2", x[:, 0]), "partial": ("r2", partial)}, GROUPS, 5)
    assert scores["full"].value > 0.95 and scores["partial"].value > 0.95


def test_probe_with_too_few_patients_is_skipped_with_a_reason() -> None:
    x = GEN.standard_normal((200, 3))
    y = np.where(np.isin(GROUPS, ["p0", "p1"]), x[:, 0], np.nan)
    score = probe_all(x, {"f": ("r2", y)}, GROUPS, 5)["f"]
    assert score.value is None and "patients" in score.reason


def test_classification_probe_with_one_class_is_skipped_with_a_reason() -> None:
    score = probe_all(GEN.standard_normal((200, 3)), {"b": ("auroc", np.ones(200))}, GROUPS, 5)["b"]
    assert score.value is None and "one class" in score.reason


def test_classification_probe_separates_a_linear_label() -> None:
    x = GEN.standard_normal((200, 3))
    score = probe_all(x, {"b": ("auroc", (x[:, 1] > 0).astype(float))}, GROUPS, 5)["b"]
    assert score.metric == "auroc" and score.value > 0.95


def test_public_phenotype_probe_matches_the_shared_probe() -> None:
    x = GEN.standard_normal((200, 3))
    label = (x[:, 0] + 0.3 * GEN.standard_normal(200) > 0).astype(float)
    assert classification_probe(x, label, GROUPS, 5) == probe_all(x, {"b": ("auroc", label)}, GROUPS, 5)["b"]
    factor = x @ np.array([1.0, -2.0, 0.5])
    assert regression_probe(x, factor, GROUPS, 5).value > 0.95


def test_factor_carried_by_one_concept_is_recovered_by_that_concept() -> None:
    codes = np.maximum(GEN.standard_normal((500, 40)), 0)
    factor = 2.0 * codes[:, 17] + 1.0
    codes[:, 3] = 0.0  # a dead concept must not break the search
    (best,) = single_concept_recovery(codes, factor[:, None])
    assert best.concept == 17 and best.abs_r == pytest.approx(1.0)


def test_single_concept_on_a_constant_code_is_undefined() -> None:
    (best,) = single_concept_recovery(np.ones((50, 4)), GEN.standard_normal((50, 1)))
    assert best.concept is None and best.abs_r is None


def test_single_concepts_drop_each_factors_unknown_rows() -> None:
    codes = np.maximum(GEN.standard_normal((300, 10)), 0)
    partial = np.where(np.arange(300) % 3 == 0, np.nan, codes[:, 4])
    found = single_concepts(codes, {"a": ("r2", codes[:, 2]), "b": ("r2", partial)})
    assert (found["a"].concept, found["b"].concept) == (2, 4)
    assert found["b"].abs_r == pytest.approx(1.0)


def test_sex_is_coded_female_one_and_unknowns_nan() -> None:
    np.testing.assert_array_equal(binary_labels(pd.Series(["F", "M", None])), [1.0, 0.0, np.nan])


def test_available_factors_lists_present_labels_with_their_metric() -> None:
    meta = pd.DataFrame({"age": [50.0, 60.0], "htn": [0.0, 1.0], "sex": ["F", "M"],
                         "t2d": [np.nan, np.nan], "window_id": [0, 1]})
    found = available_factors(meta)
    assert {k: v[0] for k, v in found.items()} == {"age": "r2", "htn": "auroc", "sex": "auroc"}


# --- Held-out protocol: fit on train patients, score on held-out patients ---------------------------


def _cohort(n_patients: int = 120, per_patient: int = 5, seed: int = 0):
    """Patients with age, sex and a hidden trait independent of both; the first 60 % are train."""
    gen = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n_patients), per_patient)
    age = gen.uniform(30, 80, n_patients)
    sex = gen.integers(0, 2, n_patients).astype(float)
    trait = gen.standard_normal(n_patients)
    fit = patient < int(0.6 * n_patients)
    return gen, patient, age[patient], sex[patient], trait[patient], fit


def test_held_out_probe_recovers_a_factor_and_cannot_memorise_patients() -> None:
    """A factor linear in the features is recovered on new patients; a per-patient random label
    that only patient identity (one-hot features) could fit scores no better than chance there."""
    gen, patient, _age, _sex, trait, fit = _cohort()
    identity = np.eye(patient.max() + 1)[patient]
    x = np.column_stack([trait + 0.1 * gen.standard_normal(len(trait)), identity])
    memorised = gen.standard_normal(patient.max() + 1)[patient]
    probes = ProbeSet(fit, patient, {"trait": ("r2", trait), "memorised": ("r2", memorised)}, None)
    scores = probe_heldout(x, probes)
    assert scores["trait"].value > 0.95
    assert scores["memorised"].value < 0.05


def test_probe_never_sees_held_out_labels() -> None:
    gen, patient, _age, _sex, trait, fit = _cohort()
    x = np.column_stack([trait, gen.standard_normal((len(trait), 3))])
    shuffled = trait.copy()
    shuffled[~fit] = gen.permutation(shuffled[~fit])
    original = probe_heldout(x, ProbeSet(fit, patient, {"t": ("r2", trait)}, None))["t"].value
    broken = probe_heldout(x, ProbeSet(fit, patient, {"t": ("r2", shuffled)}, None))["t"].value
    assert original > 0.99 and broken < 0.1


def _phenotype_probes(label: np.ndarray, patient, age, sex, fit) -> ProbeSet:
    return ProbeSet(fit, patient, {"htn": ("auroc", label), "age": ("r2", age), "sex": ("auroc", sex)},
                    np.column_stack([age, sex]))


def test_concepts_that_only_encode_age_add_nothing_beyond_age_and_sex() -> None:
    """HTN driven by age alone; concepts = noisy age. Concept AUROC looks good, but the increment over
    age + sex is ≈ 0 and its CI covers 0."""
    gen, patient, age, sex, _trait, fit = _cohort(seed=1)
    htn = (age + 8 * gen.standard_normal(len(age)) > 55).astype(float)
    concepts = np.column_stack([age / 10 + 0.3 * gen.standard_normal(len(age)), gen.standard_normal(len(age))])
    probes = _phenotype_probes(htn, patient, age, sex, fit)
    baseline = age_sex_scores(probes)
    result = adjusted_phenotypes(concepts, probes, baseline, 200, np.random.default_rng(0))["htn"]
    assert probe_heldout(concepts, probes)["htn"].value > 0.75
    assert result.age_sex > 0.75 and abs(result.increment) < 0.03
    assert result.increment_ci[0] <= 0 <= result.increment_ci[1]


def test_concepts_carrying_a_trait_beyond_age_show_a_positive_increment() -> None:
    gen, patient, age, sex, trait, fit = _cohort(seed=2)
    htn = ((age - 55) / 10 + 1.5 * trait + 0.5 * gen.standard_normal(len(age)) > 0).astype(float)
    concepts = np.column_stack([trait + 0.2 * gen.standard_normal(len(age)), gen.standard_normal(len(age))])
    probes = _phenotype_probes(htn, patient, age, sex, fit)
    result = adjusted_phenotypes(concepts, probes, age_sex_scores(probes), 200, np.random.default_rng(0))["htn"]
    assert result.adjusted > result.age_sex + 0.1
    assert result.increment_ci[0] > 0


def test_phenotypes_on_the_same_rows_share_a_fit_and_score_as_each_alone() -> None:
    """HTN and T2D known on the same rows are probed by one ridge path with a penalty per phenotype:
    the AUROCs equal separate fits (predictions to rounding) and the CI draws keep the phenotype order."""
    gen, patient, age, sex, trait, fit = _cohort(seed=3)
    htn = ((age - 55) / 10 + 1.5 * trait + 0.5 * gen.standard_normal(len(age)) > 0).astype(float)
    t2d = (age + 8 * gen.standard_normal(len(age)) > 60).astype(float)
    concepts = np.column_stack([trait + 0.2 * gen.standard_normal(len(age)), gen.standard_normal(len(age))])
    factors = {"htn": ("auroc", htn), "t2d": ("auroc", t2d)}
    probes = ProbeSet(fit, patient, factors, np.column_stack([age, sex]))
    both = adjusted_phenotypes(concepts, probes, age_sex_scores(probes), 100, np.random.default_rng(0))
    draws = np.random.default_rng(0)
    for name in ("htn", "t2d"):
        alone_probes = ProbeSet(fit, patient, {name: factors[name]}, probes.covariates)
        alone = adjusted_phenotypes(concepts, alone_probes, age_sex_scores(alone_probes), 100, draws)[name]
        assert both[name].adjusted == pytest.approx(alone.adjusted, abs=1e-12)
        assert both[name].increment_ci == pytest.approx(alone.increment_ci, abs=1e-12)


def test_single_concept_is_chosen_on_train_patients_and_scored_on_held_out_ones() -> None:
    """300 pure-noise concepts and one that tracks the factor: the in-sample best |r| of noise alone
    is inflated by the choice; scored on held-out patients it collapses, the real concept does not."""
    gen = np.random.default_rng(5)
    n_fit, n_score = 40, 400
    y = gen.standard_normal(n_fit + n_score)
    noise = gen.standard_normal((n_fit + n_score, 300))
    fit = np.arange(n_fit + n_score) < n_fit
    factors = ({"f": ("r2", y[fit])}, {"f": ("r2", y[~fit])})
    in_sample = single_concepts(noise[fit], factors[0])["f"]
    held_out = single_concepts_heldout(noise[fit], factors[0], noise[~fit], factors[1])["f"]
    assert in_sample.abs_r > 0.4 and held_out.abs_r < 0.2
    real = np.column_stack([noise, y + 0.3 * gen.standard_normal(len(y))])
    best = single_concepts_heldout(real[fit], factors[0], real[~fit], factors[1])["f"]
    assert best.concept == 300 and best.abs_r > 0.9


def test_a_chosen_concept_silent_on_held_out_patients_scores_zero() -> None:
    y = np.arange(10.0)
    codes_fit = np.column_stack([y, np.zeros(10)])
    codes_score = np.zeros((10, 2))
    best = single_concepts_heldout(codes_fit, {"f": ("r2", y)}, codes_score, {"f": ("r2", y)})["f"]
    assert (best.concept, best.abs_r) == (0, 0.0)


def test_weighted_auroc_equals_sklearn_on_the_expanded_sample_including_ties() -> None:
    """A row counted w times scores as w copies of it: each resample equals the mid-rank Mann–Whitney
    AUROC of the rows repeated to the last bit (the per-resample form it replaced), and sklearn's to
    rounding; a resample with one class only is NaN."""
    gen = np.random.default_rng(7)
    y = gen.integers(0, 2, 300).astype(float)
    score = np.round(y + gen.standard_normal(300), 1)  # rounding makes ties
    weights = gen.integers(0, 3, (4, 300))
    weights[3] = np.where(y == 1, weights[3], 0)
    aurocs = weighted_aurocs(y, score, weights)
    for b in range(3):
        rows = np.repeat(np.arange(300), weights[b])
        positives = y[rows].sum()
        rank_sum = stats.rankdata(score[rows])[y[rows] == 1].sum()
        assert aurocs[b] == (rank_sum - positives * (positives + 1) / 2) / (positives * (len(rows) - positives))
        assert aurocs[b] == pytest.approx(roc_auc_score(y[rows], score[rows]), abs=1e-12)
    assert np.isnan(aurocs[3])


def test_bootstrap_auroc_difference_ci_covers_a_planted_gain_and_excludes_zero() -> None:
    gen = np.random.default_rng(8)
    groups = np.repeat(np.arange(80), 5)
    y = np.repeat(gen.integers(0, 2, 80), 5).astype(float)
    weak, strong = y + 2.0 * gen.standard_normal(400), y + 0.5 * gen.standard_normal(400)
    gain = roc_auc_score(y, strong) - roc_auc_score(y, weak)
    low, high = bootstrap_auroc_difference(y, strong, weak, groups, 200, np.random.default_rng(0))
    assert 0 < low < gain < high
    assert bootstrap_auroc_difference(np.ones(400), strong, weak, groups, 50, np.random.default_rng(0)) is None


