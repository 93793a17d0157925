"""The planted-truth scorecard: every check passes on a good run and each one can fail on its own."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from run_fixture import write_fake_run
from stsae.eval.leaderboard import LeaderboardRow
from stsae.report.scorecard import (
    PLANTED_CHECK,
    PLANTED_FACTORS,
    Check,
    ScorecardInputs,
    build_scorecard,
    pass_count,
    scorecard,
)
from stsae.utils import io


def _full_row(seed: int = 0, is_main: bool = False) -> LeaderboardRow:
    return LeaderboardRow(
        model=f"stsae-full-K64-s{seed}", family="stsae", variant="full", d_dict=64, seed=seed, is_main=is_main,
        ev=0.95, l0=8.0, dead_fraction_train=0.0, dead_window_samples=10_000, never_fired_test_fraction=0.2,
        n_test_windows=300, consistency_heldout_aug=0.8, lag1_within_record=0.7, seed_stability_mean_cos=0.8,
        stability_null_data_mean_cos=0.7, stability_null_isotropic_mean_cos=0.1, stability_live_atoms=60,
        probe={f: {"metric": "r2", "value": 0.96, "raw_value": 0.98} for f in PLANTED_FACTORS},
        single_concept={f: {"concept": 1, "abs_r": 0.9} for f in PLANTED_FACTORS},
    )


def _baseline(family: str, ev: float = 0.9, consistency: float = 0.5, lag1: float = 0.4) -> LeaderboardRow:
    return LeaderboardRow(model=f"{family}-n16", family=family, variant=family, d_dict=16, seed=None,
                          matched_sparsity=True, k_active=8, ev=ev, l0=8.0, consistency_heldout_aug=consistency,
                          lag1_within_record=lag1)


def _good_inputs() -> ScorecardInputs:
    rows = [_full_row(0, is_main=True), _full_row(1), *(_baseline(f) for f in ("pca", "ica", "nmf"))]
    associations = {
        "metrics": {"delta_age_planted_partial_r": 0.75},
        "predictors": {"planted_morphology": {"delta_age_planted_partial_r": 0.81}},
        "associations": {"concepts": {"htn": {"or_per_5y": 2.0, "ci_low": 1.3, "ci_high": 3.0},
                                      "t2d": {"or_per_5y": 1.7, "ci_low": 1.1, "ci_high": 2.6}}},
    }
    windows = pd.DataFrame({"artifact": ["none"] * 40 + ["motion"] * 20,
                            "qc_pass": [True] * 40 + [False] * 20})
    return ScorecardInputs(rows, associations, windows)


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_good_run_passes_every_graded_check() -> None:
    checks = build_scorecard(_good_inputs())
    passed, graded = pass_count(checks)
    assert graded == 19
    assert passed == graded


def test_delta_age_check_shows_the_planted_morphology_reference() -> None:
    check = _by_name(build_scorecard(_good_inputs()))[PLANTED_CHECK]
    assert "exact planted morphology" in check.detail and "r 0.810" in check.detail


def _set(path: tuple[Any, ...], value: Any) -> Callable[[ScorecardInputs], ScorecardInputs]:
    """A mutation that sets the rows/associations entry at `path` (first element: 'rows', 'assoc'), as an
    edit of the leaderboard.json / associations.json content would."""

    def mutate(inputs: ScorecardInputs) -> ScorecardInputs:
        rows, assoc = [row.to_json() for row in inputs.rows], copy.deepcopy(inputs.associations)
        node: Any = rows if path[0] == "rows" else assoc
        for key in path[1:-1]:
            node = node[key]
        node[path[-1]] = value
        return ScorecardInputs([LeaderboardRow.from_json(row, "edited row") for row in rows], assoc,
                               inputs.windows)

    return mutate


def _qc(artifact: str, qc_pass: bool) -> Callable[[ScorecardInputs], ScorecardInputs]:
    def mutate(inputs: ScorecardInputs) -> ScorecardInputs:
        windows = inputs.windows.copy()
        idx = windows.index[windows["artifact"] == artifact][:5]
        windows.loc[idx, "qc_pass"] = qc_pass
        return ScorecardInputs(inputs.rows, inputs.associations, windows)

    return mutate


MUTATIONS = {
    "vascular_age: best single concept |r|": _set(("rows", 0, "single_concept", "vascular_age", "abs_r"),
                                                  0.7),
    "hr_bpm: concept probe / raw-embedding probe": _set(("rows", 0, "probe", "hr_bpm", "value"), 0.8),
    "aix: concept probe / raw-embedding probe": _set(("rows", 0, "probe", "aix", "value"), 0.9),
    "full ST-SAE − matched PCA: consistency on held-out augmentations": _set(
        ("rows", 2, "consistency_heldout_aug"), 0.85),
    "full ST-SAE − matched ICA: lag-1 within records": _set(("rows", 3, "lag1_within_record"), 0.71),
    "full ST-SAE − matched NMF: consistency on held-out augmentations": _set(
        ("rows", 4, "consistency_heldout_aug"), 0.81),
    "dead concepts in full model (fraction, training definition)": _set(("rows", 0, "dead_fraction_train"),
                                                                        0.02),
    "seed stability − data-aware null (mean matched cos, live atoms)": _set(
        ("rows", 0, "stability_null_data_mean_cos"), 0.85),
    PLANTED_CHECK: _set(("assoc", "metrics", "delta_age_planted_partial_r"), 0.5),
    "HTN: odds ratio per 5 y Δage, lower 95% CI": _set(("assoc", "associations", "concepts", "htn", "ci_low"),
                                                       0.95),
    "T2D: odds ratio per 5 y Δage, lower 95% CI": _set(("assoc", "associations", "concepts", "t2d", "ci_low"),
                                                       1.0),
    "QC sensitivity (artifact windows rejected)": _qc("motion", True),
    "QC specificity (clean windows kept)": _qc("none", False),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_each_check_fails_when_its_value_misses(name: str) -> None:
    checks = _by_name(build_scorecard(MUTATIONS[name](_good_inputs())))
    assert checks[name].passed is False
    assert [c.name for c in checks.values() if c.passed is False] == [name]


@given(abs_r=st.floats(0, 1), dead=st.floats(0, 1), n_missed=st.integers(0, 20))
def test_verdicts_follow_the_measured_values(abs_r: float, dead: float, n_missed: int) -> None:
    inputs = _set(("rows", 0, "single_concept", "vascular_age", "abs_r"), abs_r)(_good_inputs())
    inputs = _set(("rows", 0, "dead_fraction_train"), dead)(inputs)
    windows = inputs.windows.copy()
    windows.loc[windows.index[windows["artifact"] != "none"][:n_missed], "qc_pass"] = True
    checks = _by_name(build_scorecard(ScorecardInputs(inputs.rows, inputs.associations, windows)))
    assert checks["vascular_age: best single concept |r|"].passed is (abs_r >= 0.8)
    assert checks["dead concepts in full model (fraction, training definition)"].passed is (dead < 0.01)
    sensitivity = checks["QC sensitivity (artifact windows rejected)"]
    assert sensitivity.value == pytest.approx((20 - n_missed) / 20)
    assert sensitivity.passed is ((20 - n_missed) / 20 >= 0.95)


def test_probe_ratio_with_nonpositive_raw_value_is_not_available() -> None:
    inputs = _set(("rows", 0, "probe", "resp_rate", "raw_value"), -0.1)(_good_inputs())
    check = _by_name(build_scorecard(inputs))["resp_rate: concept probe / raw-embedding probe"]
    assert check.passed is None
    assert "undefined" in check.detail


def test_missing_associations_are_not_available_and_not_passed() -> None:
    inputs = _good_inputs()
    checks = build_scorecard(ScorecardInputs(inputs.rows, None, inputs.windows))
    delta = _by_name(checks)[PLANTED_CHECK]
    assert delta.passed is None and delta.value is None
    passed, graded = pass_count(checks)
    assert passed == graded - 3


def test_skipped_association_shows_the_reason() -> None:
    inputs = _set(("assoc", "associations", "concepts", "t2d"), {"skipped": "no positives"})(_good_inputs())
    check = _by_name(build_scorecard(inputs))["T2D: odds ratio per 5 y Δage, lower 95% CI"]
    assert check.passed is None
    assert check.detail == "skipped: no positives"


def test_baseline_is_compared_at_the_closest_ev() -> None:
    inputs = _good_inputs()
    rows = [*inputs.rows, _baseline("pca", ev=0.94, consistency=0.9),
            _baseline("pca", ev=0.6, consistency=0.1)]
    check = _by_name(build_scorecard(ScorecardInputs(rows, inputs.associations, inputs.windows)))[
        "full ST-SAE − matched PCA: consistency on held-out augmentations"]
    assert check.passed is False
    assert "EV 0.950 vs 0.940" in check.detail


def test_scorecard_grades_the_row_evaluate_marked_main_not_the_lowest_seed() -> None:
    """train.seeds: [1, 0] makes seed 1 the main model; the scorecard must follow, not pick seed 0."""
    inputs = _good_inputs()
    rows = copy.deepcopy(inputs.rows)
    rows[0].is_main, rows[1].is_main = False, True
    rows[1].dead_fraction_train = 0.5
    check = _by_name(build_scorecard(ScorecardInputs(rows, inputs.associations, inputs.windows)))[
        "dead concepts in full model (fraction, training definition)"]
    assert check.passed is False and "s1" in check.detail


def test_dead_check_uses_the_training_definition_not_never_fired_on_test() -> None:
    """A latent that fires rarely is 'never fired' on a small test set yet alive in training: the
    scorecard grades the training definition (0 here) and states the test count beside it."""
    inputs = _set(("rows", 0, "never_fired_test_fraction"), 0.4)(_good_inputs())
    check = _by_name(build_scorecard(inputs))["dead concepts in full model (fraction, training definition)"]
    assert check.passed is True and check.value == 0.0
    assert "10000 training samples" in check.detail and "300 test windows: 0.400" in check.detail


def test_stability_is_graded_against_the_data_aware_null_not_the_isotropic_one() -> None:
    """0.52 beats the isotropic 0.11 by far but not untrained data-initialised dictionaries (0.74)."""
    inputs = _set(("rows", 0, "seed_stability_mean_cos"), 0.52)(_good_inputs())
    inputs = _set(("rows", 0, "stability_null_data_mean_cos"), 0.74)(inputs)
    check = _by_name(build_scorecard(inputs))["seed stability − data-aware null (mean matched cos, live atoms)"]
    assert check.passed is False and check.value == pytest.approx(-0.22)
    assert "untrained data-initialised" in check.detail


def test_fake_run_scorecard_reads_files(tmp_path: Path) -> None:
    checks = _by_name(scorecard(write_fake_run(tmp_path / "run")))
    assert checks["QC sensitivity (artifact windows rejected)"].passed is False
    assert checks["vascular_age: best single concept |r|"].passed is True


def test_real_data_run_has_no_scorecard(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    meta = io.read_parquet(run_dir.meta)
    io.write_parquet(run_dir.meta, meta.drop(columns=["vascular_age", "artifact"]))
    assert scorecard(run_dir) is None


def test_matched_rows_that_are_the_dense_code_are_never_the_rival() -> None:
    """A baseline with K <= k has top-k = its dense code (Jaccard 1): even closest in EV, it is skipped."""
    inputs = _good_inputs()
    dense_as_matched = replace(_baseline("pca", ev=0.95, consistency=1.0), model="pca-n8", d_dict=8, k_active=8)
    rows = [*inputs.rows, dense_as_matched]
    check = _by_name(build_scorecard(ScorecardInputs(rows, inputs.associations, inputs.windows)))[
        "full ST-SAE − matched PCA: consistency on held-out augmentations"]
    assert check.passed is True and "pca-n16" in check.detail and "pca-n8" not in check.detail


def test_without_a_sparsified_baseline_the_comparison_is_not_available() -> None:
    inputs = _good_inputs()
    rows = [r if r.family != "ica" else replace(r, d_dict=8) for r in inputs.rows]
    check = _by_name(build_scorecard(ScorecardInputs(rows, inputs.associations, inputs.windows)))[
        "full ST-SAE − matched ICA: lag-1 within records"]
    assert check.passed is None and "more components than k" in check.detail


def test_phenotype_increment_over_age_and_sex_is_reported_ungraded() -> None:
    inputs = _set(("rows", 0, "probe", "htn"), {"metric": "auroc", "value": 0.83, "raw_value": 0.84,
                                                "age_sex_value": 0.82, "adjusted_value": 0.83,
                                                "increment": 0.01, "increment_ci": [-0.02, 0.04]})(_good_inputs())
    checks = _by_name(build_scorecard(inputs))
    line = checks["HTN: AUROC increment of concepts over age + sex"]
    assert line.value == 0.01 and line.op is None and line.passed is None
    assert "0.830 (concepts + age + sex) vs 0.820 (age + sex)" in line.detail and "[-0.020, 0.040]" in line.detail
    assert checks["T2D: AUROC increment of concepts over age + sex"].value is None
