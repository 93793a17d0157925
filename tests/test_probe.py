"""Patient-grouped probes and single-concept recovery."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from stsae.eval.probe import (
    available_factors,
    binary_labels,
    classification_probe,
    grouped_folds,
    regression_probe,
    single_concept_recovery,
)

GEN = np.random.default_rng(0)
GROUPS = np.repeat([f"p{i}" for i in range(20)], 10)


def test_folds_never_put_a_test_patient_in_training() -> None:
    folds = grouped_folds(GROUPS, 5)
    assert len(folds) == 5
    for train_idx, test_idx in folds:
        assert set(GROUPS[train_idx]).isdisjoint(GROUPS[test_idx])
    assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(len(GROUPS)))


def test_probe_fits_see_only_training_patients(monkeypatch: pytest.MonkeyPatch) -> None:
    from stsae.eval import probe as probe_module

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = probe_module.grouped_folds

    def recording(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
        folds = real(groups, n_folds)
        seen.extend(folds)
        return folds

    monkeypatch.setattr(probe_module, "grouped_folds", recording)
    x = GEN.standard_normal((200, 4))
    regression_probe(x, x[:, 0], GROUPS, 4)
    assert seen and all(set(GROUPS[a]).isdisjoint(GROUPS[b]) for a, b in seen)


def test_regression_probe_recovers_a_linear_factor() -> None:
    x = GEN.standard_normal((200, 6))
    score = regression_probe(x, x @ np.arange(6.0) + 0.1 * GEN.standard_normal(200), GROUPS, 5)
    assert score.metric == "r2" and score.value > 0.95


def test_classification_probe_with_one_class_is_skipped_with_a_reason() -> None:
    score = classification_probe(GEN.standard_normal((200, 3)), np.ones(200), GROUPS, 5)
    assert score.value is None and "one class" in score.reason


def test_classification_probe_separates_a_linear_label() -> None:
    x = GEN.standard_normal((200, 3))
    score = classification_probe(x, (x[:, 1] > 0).astype(float), GROUPS, 5)
    assert score.metric == "auroc" and score.value > 0.95


def test_factor_carried_by_one_concept_is_recovered_by_that_concept() -> None:
    codes = np.maximum(GEN.standard_normal((500, 40)), 0)
    factor = 2.0 * codes[:, 17] + 1.0
    codes[:, 3] = 0.0  # a dead concept must not break the search
    best = single_concept_recovery(codes, factor)
    assert best.concept == 17 and best.abs_r == pytest.approx(1.0)


def test_single_concept_on_a_constant_code_is_undefined() -> None:
    best = single_concept_recovery(np.ones((50, 4)), GEN.standard_normal(50))
    assert best.concept is None and best.abs_r is None


def test_sex_is_coded_female_one_and_unknowns_nan() -> None:
    np.testing.assert_array_equal(binary_labels(pd.Series(["F", "M", None])), [1.0, 0.0, np.nan])


def test_available_factors_lists_present_labels_with_their_metric() -> None:
    meta = pd.DataFrame({"age": [50.0, 60.0], "htn": [0.0, 1.0], "sex": ["F", "M"],
                         "t2d": [np.nan, np.nan], "window_id": [0, 1]})
    found = available_factors(meta)
    assert {k: v[0] for k, v in found.items()} == {"age": "r2", "htn": "auroc", "sex": "auroc"}
