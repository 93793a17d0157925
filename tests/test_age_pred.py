"""Age prediction, the validation-only age-bias correction, and Δage on planted cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsae.aging import age_pred
from stsae.aging.age_pred import (
    AgingResult,
    aging_pipeline,
    fit_age_predictor,
    fit_bias_correction,
    out_of_fold_predictions,
    partial_correlation,
    patient_mean_codes,
    patient_table,
    ridge_val_mae,
)
from stsae.config import AgingSection
from stsae.errors import InputDataError

N_INFORMATIVE = 3
FAST = AgingSection(l1_ratios=[0.5, 1.0], bias_correction_on="validation")


def cohort(
    n: int = 200, k: int = 20, seed: int = 0, acceleration_per_year: float = 0.0
) -> tuple[np.ndarray, pd.DataFrame]:
    """Patients whose first N_INFORMATIVE features carry vascular age (= age + planted acceleration).

    acceleration_per_year > 0 makes the planted acceleration grow with age, as HTN/T2D make it in the
    synthetic cohort (0.12 gives r(acceleration, age) ≈ 0.49, as measured on the demo)."""
    gen = np.random.default_rng(seed)
    age = gen.uniform(20, 85, n)
    acceleration = gen.normal(0, 4, n) + acceleration_per_year * (age - age.mean())
    x = gen.normal(size=(n, k))
    x[:, :N_INFORMATIVE] += (age + acceleration)[:, None] / 10
    split = np.array(["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10) + ["test"] * (n - n * 8 // 10))
    patients = pd.DataFrame(
        {
            "patient_id": [f"p{i:04d}" for i in range(n)],
            "split": split,
            "age": age,
            "sex": gen.choice(["M", "F"], n),
            "htn": gen.integers(0, 2, n).astype(float),
            "t2d": gen.integers(0, 2, n).astype(float),
            "vascular_acceleration": acceleration,
        }
    )
    return x, patients


def test_bias_correction_removes_regression_to_the_mean_from_delta_age() -> None:
    gen = np.random.default_rng(1)
    fit_age, test_age = gen.uniform(20, 85, 400), gen.uniform(20, 85, 400)

    def biased(age: np.ndarray) -> np.ndarray:
        return 52 + 0.6 * (age - 52) + gen.normal(0, 3, len(age))

    correction = fit_bias_correction(biased(fit_age), fit_age, "validation")
    test_pred = biased(test_age)
    assert np.corrcoef(test_pred - test_age, test_age)[0, 1] < -0.8
    assert abs(np.corrcoef(correction.apply(test_pred) - test_age, test_age)[0, 1]) < 0.1


@pytest.fixture(scope="module")
def default_run() -> tuple[pd.DataFrame, AgingResult]:
    x, patients = cohort()
    return patients, aging_pipeline(x, patients, FAST, seed=0)


def test_bias_correction_is_fitted_on_validation_patients_only(
    default_run: tuple[pd.DataFrame, AgingResult],
) -> None:
    patients, result = default_run
    val_ids = set(patients.loc[patients["split"] == "val", "patient_id"])
    test_ids = set(patients.loc[patients["split"] == "test", "patient_id"])
    assert set(result.correction_patient_ids) == val_ids
    assert not set(result.correction_patient_ids) & test_ids


def test_bias_correction_does_not_change_when_test_ages_change() -> None:
    x, patients = cohort()
    shuffled = patients.copy()
    test = shuffled["split"] == "test"
    shuffled.loc[test, "age"] = np.random.default_rng(3).permutation(shuffled.loc[test, "age"].to_numpy())
    first = aging_pipeline(x, patients, FAST, seed=0).correction
    second = aging_pipeline(x, shuffled, FAST, seed=0).correction
    assert (first.slope, first.intercept) == (second.slope, second.intercept)


def test_out_of_fold_correction_uses_train_patients_only() -> None:
    x, patients = cohort()
    result = aging_pipeline(x, patients, FAST.model_copy(update={"bias_correction_on": "oof_train"}), seed=0)
    assert set(result.correction_patient_ids) == set(patients.loc[patients["split"] == "train", "patient_id"])
    assert result.correction.fitted_on == "oof_train"


def test_out_of_fold_prediction_of_a_patient_never_sees_that_patients_age() -> None:
    """Nested CV: changing one train patient's age changes every fold model but its own prediction."""
    x, patients = cohort(n=120)
    age = patients["age"].to_numpy()
    groups = patients["patient_id"].to_numpy()
    first = out_of_fold_predictions(x, age, groups, FAST, seed=0)
    changed = age.copy()
    changed[7] += 40.0
    second = out_of_fold_predictions(x, changed, groups, FAST, seed=0)
    assert first[7] == second[7]
    assert not np.allclose(np.delete(first, 7), np.delete(second, 7))


def test_nested_out_of_fold_correction_removes_the_age_dependence_of_test_delta_age() -> None:
    x, patients = cohort(n=400)
    oof = FAST.model_copy(update={"bias_correction_on": "oof_train"})
    metrics = aging_pipeline(x, patients, oof, seed=0).metrics
    assert abs(metrics["delta_age_age_r"]) < 0.2
    assert metrics["delta_age_planted_partial_r"] > 0.5


def test_corrected_delta_age_is_uncorrelated_with_age_and_tracks_planted_acceleration() -> None:
    x, patients = cohort(n=400)
    metrics = aging_pipeline(x, patients, FAST, seed=0).metrics
    assert abs(metrics["delta_age_age_r"]) < 0.2
    assert metrics["delta_age_planted_partial_r"] > 0.5


def test_partial_r_given_age_scores_a_perfect_delta_age_one_where_the_raw_r_is_capped() -> None:
    gen = np.random.default_rng(0)
    age = gen.uniform(20, 85, 5000)
    acceleration = 0.12 * (age - age.mean()) + gen.normal(0, 4, len(age))
    perfect = acceleration - np.polyval(np.polyfit(age, acceleration, 1), age)  # corr(Δage, age) = 0
    raw_cap = np.sqrt(1 - np.corrcoef(acceleration, age)[0, 1] ** 2)
    assert np.corrcoef(perfect, acceleration)[0, 1] == pytest.approx(raw_cap)
    assert raw_cap < 0.9
    assert partial_correlation(perfect, acceleration, age) == pytest.approx(1.0)


def test_age_correlated_acceleration_is_tracked_by_partial_r_above_the_raw_r() -> None:
    x, patients = cohort(n=400, acceleration_per_year=0.12)
    metrics = aging_pipeline(x, patients, FAST, seed=0).metrics
    assert abs(metrics["delta_age_age_r"]) < 0.2
    assert metrics["delta_age_planted_partial_r"] > metrics["delta_age_planted_raw_r"] + 0.05
    assert metrics["delta_age_planted_partial_r"] > 0.6


def test_ridge_screen_ranks_informative_features_first_and_ignores_test_ages() -> None:
    x, patients = cohort()
    noise = np.random.default_rng(1).normal(size=x.shape)
    assert ridge_val_mae(x, patients) < ridge_val_mae(noise, patients)
    shuffled = patients.assign(age=np.where(patients["split"] == "test", 0.0, patients["age"]))
    assert ridge_val_mae(x, shuffled) == ridge_val_mae(x, patients)


def test_test_metrics_are_on_uncorrected_test_predictions(
    default_run: tuple[pd.DataFrame, AgingResult],
) -> None:
    _, result = default_run
    test = result.predictions[result.predictions["split"] == "test"]
    assert result.metrics["mae"] == pytest.approx(np.abs(test["age_pred"] - test["age"]).mean())
    assert result.metrics["r"] == pytest.approx(np.corrcoef(test["age_pred"], test["age"])[0, 1])
    assert set(result.predictions["split"]) == {"val", "test"}


def test_delta_age_equals_corrected_prediction_minus_age(
    default_run: tuple[pd.DataFrame, AgingResult],
) -> None:
    _, result = default_run
    expected = result.predictions["age_pred_corrected"] - result.predictions["age"]
    assert np.allclose(result.delta["delta_age"], expected)


def test_age_predictor_weights_the_informative_features() -> None:
    x, patients = cohort()
    train = (patients["split"] == "train").to_numpy()
    predictor = fit_age_predictor(
        x[train], patients["age"].to_numpy()[train], patients["patient_id"].to_numpy()[train], FAST, seed=0
    )
    top = np.argsort(-np.abs(predictor.coef))[:N_INFORMATIVE]
    assert set(top) == set(range(N_INFORMATIVE))


def test_stability_selection_option_keeps_only_stable_features() -> None:
    x, patients = cohort()
    train = (patients["split"] == "train").to_numpy()
    config = FAST.model_copy(
        update={"stability_selection": True, "stability_rounds": 20, "stability_threshold": 0.8}
    )
    predictor = fit_age_predictor(
        x[train], patients["age"].to_numpy()[train], patients["patient_id"].to_numpy()[train], config, seed=0
    )
    assert set(range(N_INFORMATIVE)) <= set(predictor.selected.tolist())
    assert np.all(predictor.coef[np.setdiff1d(np.arange(x.shape[1]), predictor.selected)] == 0)
    assert predictor.stability is not None and set(predictor.selected) <= set(predictor.stability.selected)


def test_patient_mean_codes_average_each_patients_windows_across_batches() -> None:
    z = np.arange(12, dtype=np.float32).reshape(6, 2)
    ids, means = patient_mean_codes(
        lambda batch: batch * 2, z, np.array(["b", "a", "b", "a", "c", "b"]), batch_rows=4
    )
    assert list(ids) == ["a", "b", "c"]
    assert np.allclose(means, [[8, 10], [28 / 3, 34 / 3], [16, 18]])


def test_patient_mean_codes_of_a_memmap_equal_those_of_the_array_bit_for_bit(tmp_path) -> None:
    """A memmapped z (read with positioned reads, as the age stage does) gives exactly the means of the
    same rows in memory, with patients spread over batches in any order."""
    rs = np.random.default_rng(3)
    z = rs.normal(size=(500, 8)).astype(np.float32)
    patients = rs.choice([f"p{i}" for i in range(37)], size=500)
    np.save(tmp_path / "z.npy", z)
    mapped = np.load(tmp_path / "z.npy", mmap_mode="r")
    encode = lambda batch: np.maximum(batch @ np.ones((8, 5), np.float32), 0)  # noqa: E731
    ids, means = patient_mean_codes(encode, z, patients, batch_rows=64)
    ids_mapped, means_mapped = patient_mean_codes(encode, mapped, patients, batch_rows=64)
    assert list(ids) == list(ids_mapped) and np.array_equal(means, means_mapped)
    codes = encode(z).astype(np.float64)
    expected = np.stack([codes[patients == pid].mean(0) for pid in ids])
    assert np.allclose(means, expected, rtol=1e-12, atol=1e-12)


def test_patient_table_rejects_a_patient_in_two_splits() -> None:
    meta = pd.DataFrame(
        {
            "patient_id": ["a", "a"],
            "split": ["train", "test"],
            "age": [50.0, 50.0],
            "sex": ["M", "M"],
            "htn": [0.0, 0.0],
            "t2d": [0.0, 0.0],
        }
    )
    with pytest.raises(InputDataError, match="several splits"):
        patient_table(meta)


def test_a_rare_feature_far_outside_its_train_range_cannot_drag_a_prediction_beyond_it() -> None:
    """Planted: feature 1 fires on 3 of 120 train patients (tiny SD). A new patient on whom it fires 50x
    harder sits hundreds of SDs out: unclipped, the linear model predicts hundreds of years; clipped to the
    train range, the prediction stays within the train patients' predictions, which clipping leaves as is."""
    from stsae.aging.age_pred import AgePredictor, fit_age_predictor

    g = np.random.default_rng(0)
    age = g.uniform(20, 85, 120)
    x = np.column_stack([age / 10 + g.normal(0, 0.3, 120), np.zeros(120)])
    x[:3, 1] = 0.05
    fitted = fit_age_predictor(x, age, np.arange(120), AgingSection(stability_selection=False), seed=0)
    assert np.array_equal(fitted.low, x.min(0)) and np.array_equal(fitted.high, x.max(0))
    predictor = AgePredictor(mean=fitted.mean, scale=fitted.scale, low=fitted.low, high=fitted.high,
                             coef=np.array([15.0, 2.0]), intercept=50.0, alpha=0.0, l1_ratio=1.0,
                             selected=np.array([0, 1]))
    outlier = np.array([[5.0, 2.5]])
    unclipped = (((outlier - predictor.mean) / predictor.scale) @ predictor.coef + predictor.intercept)[0]
    train_predictions = predictor.predict(x)
    assert unclipped > 300
    assert train_predictions.min() <= predictor.predict(outlier)[0] <= train_predictions.max()
    assert np.allclose(train_predictions, ((x - predictor.mean) / predictor.scale) @ predictor.coef + 50.0)


def test_cross_validation_on_threads_fits_the_same_model_as_serially(monkeypatch: pytest.MonkeyPatch) -> None:
    x, patients = cohort(k=40)
    train = (patients["split"] == "train").to_numpy()
    args = (x[train], patients["age"].to_numpy()[train], patients["patient_id"].to_numpy()[train], FAST, 0)
    monkeypatch.setattr(age_pred, "_cv_threads", lambda: 1)
    serial = fit_age_predictor(*args)
    monkeypatch.setattr(age_pred, "_cv_threads", lambda: 2)
    threaded = fit_age_predictor(*args)
    assert (threaded.alpha, threaded.l1_ratio) == (serial.alpha, serial.l1_ratio)
    np.testing.assert_array_equal(threaded.coef, serial.coef)
    assert threaded.intercept == serial.intercept


def test_gram_descent_on_more_features_than_patients_fits_the_residual_descent_model(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Collinear features outnumbering the train patients (the raw-embedding case): the Gram-matrix
    descent picks the same penalty and support as scikit-learn's default residual descent, and
    coefficients equal to the solver tolerance."""
    x, patients = cohort(k=20)
    gen = np.random.default_rng(1)
    wide = x @ gen.normal(size=(20, 150)) + 0.01 * gen.normal(size=(len(x), 150))
    train = (patients["split"] == "train").to_numpy()
    args = (wide[train], patients["age"].to_numpy()[train], patients["patient_id"].to_numpy()[train], FAST, 0)
    gram = fit_age_predictor(*args)
    monkeypatch.setattr(age_pred, "GRAM_MAX_FEATURES", 0)
    residual = fit_age_predictor(*args)
    assert wide[train].shape[0] < wide.shape[1]
    assert (gram.alpha, gram.l1_ratio) == (residual.alpha, residual.l1_ratio)
    np.testing.assert_array_equal(gram.selected, residual.selected)
    np.testing.assert_allclose(gram.coef, residual.coef, atol=1e-6 * np.abs(residual.coef).max())


def test_cross_validation_threads_are_bounded_by_the_memory_of_their_fold_copies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1M windows (11,667 train patients x 4,096 concepts) one path holds ~0.8 GB, so the paths run one
    at a time; the demo's small designs keep every core; a tighter budget never goes below one thread."""
    monkeypatch.setattr(age_pred, "_cv_threads", lambda: 2)
    assert age_pred._cv_jobs(11_667, 4096, 5) == 1
    assert age_pred._cv_jobs(200, 512, 5) == 2
    monkeypatch.setattr(age_pred, "CV_PATHS_MEMORY_BYTES", 1)
    assert age_pred._cv_jobs(200, 512, 5) == 1


def test_patients_without_an_age_are_left_out_as_if_never_given() -> None:
    x, patients = cohort()
    unknown = np.zeros(len(patients), dtype=bool)
    unknown[[3, 150, 190]] = True  # one train, one val, one test patient
    with_gaps = patients.assign(age=patients["age"].where(~unknown))
    gapped = aging_pipeline(x, with_gaps, FAST, seed=0)
    known = aging_pipeline(x[~unknown], patients[~unknown].reset_index(drop=True), FAST, seed=0)
    assert gapped.metrics == known.metrics
    np.testing.assert_array_equal(gapped.predictor.coef, known.predictor.coef)
    assert len(gapped.delta) == len(known.delta)
