"""The concept dashboard: per-concept statistics recover planted truths, and the assembled data holds
what every card needs (a real, tiny ST-SAE on a fake run)."""

from __future__ import annotations

import base64
import itertools
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from run_fixture import write_fake_run, write_fake_run_with_figures
from stsae.aging.age_pred import AgePredictor, age_model_record
from stsae.aging.associations import logistic_association
from stsae.aging.logit import logit_per_column
from stsae.config import Config
from stsae.errors import InputDataError
from stsae.models.stsae import STSAE
from stsae.pipeline.runner import StageContext
from stsae.report import concept_stats as stats
from stsae.report import dashboard
from stsae.report.dashboard import (
    MAX_POOL_WINDOWS,
    TOP_PER_PATIENT,
    build_dashboard,
    dashboard_json,
    example_counts,
    quantise,
)
from stsae.rundir import RunDir
from stsae.stages import report as report_stage
from stsae.utils import io

K = 16


def dequantise(packed: dict) -> np.ndarray:
    """What dashboard.js does with a quantised array."""
    q = np.frombuffer(base64.b64decode(packed["b"]), dtype=np.int8).astype(np.float64)
    return np.where(q == -128, np.nan, q * packed["s"])


def dashboard_config() -> Config:
    config = Config()
    config.train.d_dict = K
    config.train.k = 4
    config.train.seeds = [0, 1]
    config.aging.min_events = 2
    return config


def add_model_and_embeddings(run_dir: RunDir) -> None:
    """z from a fixed random projection of the QC-passed windows, z_aug = z + noise, and two tiny
    data-initialised `full` ST-SAEs (seeds 0, 1) at K=16, plus an age model with three concepts."""
    meta, qc = io.read_parquet(run_dir.meta), io.read_parquet(run_dir.qc)
    rows = np.flatnonzero(qc["qc_pass"].to_numpy())
    windows = np.load(run_dir.windows)[rows].astype(np.float64)
    generator = np.random.default_rng(7)
    z = (windows @ generator.normal(0, 0.05, (windows.shape[1], 512)) + 3.0).astype(np.float32)
    io.save_npy(run_dir.z, z)
    io.save_npy(run_dir.z_aug, (z + generator.normal(0, 0.05, z.shape)).astype(np.float32))
    index = meta.iloc[rows][["window_id", "patient_id", "record_id", "segment_idx", "split"]]
    io.write_parquet(run_dir.index, index.reset_index(drop=True))
    for seed in (0, 1):
        model = STSAE(512, K, "topk", 4, generator=torch.Generator().manual_seed(seed))
        model.init_from_data(z, torch.Generator().manual_seed(seed))
        model.save(run_dir.stsae_checkpoint("full", K, seed),
                   {"variant": "full", "seed": seed, "complete": True})
    coef = np.zeros(K)
    coef[[2, 3, 5]] = [4.0, -2.5, 1.0]
    predictor = AgePredictor(mean=np.zeros(K), scale=np.ones(K), low=np.zeros(K), high=np.full(K, 1e6), coef=coef,
                             intercept=55.0, alpha=0.1, l1_ratio=0.5, selected=np.array([2, 3, 5]))
    io.write_json(run_dir.age_model, age_model_record(f"stsae-full-K{K}-s0", predictor))


def write_dashboard_run(root: Path, cache_root: Path) -> RunDir:
    run_dir = write_fake_run_with_figures(root, cache_root)
    add_model_and_embeddings(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, dict]:
    base = tmp_path_factory.mktemp("dash")
    run_dir = write_fake_run(base / "run")
    add_model_and_embeddings(run_dir)
    return run_dir, build_dashboard(run_dir, dashboard_config())


# ---- per-concept statistics against planted truths ---------------------------------------------------

def test_lag1_is_high_for_a_smooth_concept_and_zero_for_record_level_noise() -> None:
    generator = np.random.default_rng(0)
    n_records, length = 60, 20
    smooth, noise = [], []
    for _ in range(n_records):
        level = generator.normal(0, 5)  # a record-level offset: must not count as temporal smoothness
        ar = [generator.normal()]
        for _ in range(length - 1):
            ar.append(0.9 * ar[-1] + np.sqrt(1 - 0.81) * generator.normal())
        smooth.append(level + np.array(ar))
        noise.append(level + generator.normal(size=length))
    codes = np.column_stack([np.concatenate(smooth), np.concatenate(noise)])
    records = np.repeat(np.arange(n_records), length).astype(str)
    segments = np.tile(np.arange(length), n_records)
    shuffle = generator.permutation(len(records))  # row order must not matter
    lag1 = stats.within_record_lag1(codes[shuffle], records[shuffle], segments[shuffle], np.random.default_rng(1))
    assert lag1[0] > 0.2
    assert abs(lag1[1]) < 0.08


def test_record_pairs_never_cross_records_and_respect_gaps() -> None:
    records = np.array(["a", "a", "a", "a", "b", "b", "b"])
    segments = np.array([0, 1, 2, 3, 0, 1, 2])
    adj, non = stats.record_pairs(records, segments, np.random.default_rng(0), draws=20)
    assert sorted(map(tuple, adj)) == [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6)]
    assert len(non) > 0
    assert (records[non[:, 0]] == records[non[:, 1]]).all()
    assert (np.abs(segments[non[:, 0]] - segments[non[:, 1]]) >= 2).all()


def test_firing_jaccard_recovers_the_planted_overlap_and_beats_its_null() -> None:
    codes = np.zeros((100, 3))
    aug = np.zeros((100, 3))
    codes[:40, 0], aug[20:60, 0] = 1.0, 1.0  # |A∩B| = 20, |A∪B| = 60
    codes[:10, 1], aug[:10, 1] = 2.0, 3.0  # identical firing
    jaccard = stats.firing_jaccard(codes, aug)
    assert jaccard[0] == pytest.approx(1 / 3)
    assert jaccard[1] == 1.0
    assert np.isnan(jaccard[2])
    null = stats.independent_jaccard((codes > 0).mean(0), (aug > 0).mean(0))
    assert null[1] == pytest.approx(0.01 / 0.19)


def test_matched_atom_cosines_follow_atoms_through_a_permutation() -> None:
    generator = np.random.default_rng(0)
    atoms = generator.normal(size=(8, 32))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    other = atoms.copy()
    other[3] = generator.normal(size=32)  # atom 3 is not learnt again
    permuted = other[generator.permutation(8)]
    cos = stats.matched_atom_cosines(atoms, [permuted])
    assert np.allclose(np.delete(cos, 3), 1.0, atol=1e-5)
    assert cos[3] < 0.7


def test_age_contributions_add_up_to_the_linear_prediction() -> None:
    generator = np.random.default_rng(0)
    codes = np.abs(generator.normal(size=(30, 5)))
    mean, scale = codes[:20].mean(0), codes[:20].std(0)
    predictor = AgePredictor(mean=mean, scale=scale, low=codes.min(0), high=codes.max(0),
                             coef=np.array([3.0, 0.0, -1.0, 0.0, 2.0]), intercept=50.0, alpha=0.1, l1_ratio=1.0,
                             selected=np.array([0, 2, 4]))
    contributions = predictor.contributions(codes)
    assert np.allclose(contributions.sum(1), ((codes - mean) / scale) @ predictor.coef)
    assert np.allclose(contributions.sum(1) + 50.0, predictor.predict(codes))
    assert np.all(contributions[:, [1, 3]] == 0)


def test_activation_odds_ratios_find_a_planted_effect_and_not_a_null_one() -> None:
    generator = np.random.default_rng(0)
    n = 600
    age = generator.uniform(20, 80, n)
    sex = np.where(generator.random(n) < 0.5, "M", "F")
    effect, null = generator.normal(size=n), generator.normal(size=n)
    htn = (generator.random(n) < 1 / (1 + np.exp(-(effect - 0.5)))).astype(float)
    patients = pd.DataFrame({"age": age, "sex": sex, "htn": htn})
    planted, unrelated, constant = stats.activation_odds_ratios(np.column_stack([effect, null, np.zeros(n)]),
                                                                patients, "htn", min_events=5)
    assert planted["lo"] > 1.0 and planted["or"] == pytest.approx(np.e, rel=0.3)
    assert unrelated["lo"] < 1.0 < unrelated["hi"]
    assert constant == {"skipped": "activation constant over patients"}


def test_activation_odds_ratios_match_the_delta_age_association_fit() -> None:
    """One batched fit per concept gives the per-SD OR that `logistic_association` gives for that column."""
    generator = np.random.default_rng(2)
    n = 400
    patients = pd.DataFrame({"age": generator.uniform(20, 80, n),
                             "sex": np.where(generator.random(n) < 0.5, "M", "F")})
    codes = generator.gamma(0.5, size=(n, 3))
    patients["htn"] = (generator.random(n) < 1 / (1 + np.exp(-(codes[:, 1] - 0.5)))).astype(float)
    batched = stats.activation_odds_ratios(codes, patients, "htn", min_events=5)
    for column, fit in enumerate(batched):
        alone = logistic_association(patients.assign(delta_age=codes[:, column]), "htn", min_events=5)
        assert fit["or"] == pytest.approx(alone["or_per_sd"], rel=1e-8)
        assert fit["hi"] == pytest.approx(alone["or_per_sd_ci_high"], rel=1e-8)


def test_a_rare_concept_at_a_tiny_scale_is_fitted_per_sd_where_the_raw_fit_never_converges() -> None:
    """Firing on 3 % of patients at 1e-6: unscaled, Newton's steps on a ~1e6 coefficient never fall
    below the absolute tolerance; per SD it converges to the OR of the same concept at unit scale."""
    generator = np.random.default_rng(1)
    n = 300
    patients = pd.DataFrame({"age": generator.uniform(20, 80, n), "sex": np.where(generator.random(n) < 0.5, "M", "F"),
                             "htn": (generator.random(n) < 0.3).astype(float)})
    tiny = generator.gamma(0.5, size=n) * (generator.random(n) < 0.03) * 1e-6
    adjustments = np.column_stack([patients["age"], patients["sex"] == "M"]).astype(float)
    assert logit_per_column(tiny[:, None], adjustments, patients["htn"].to_numpy()).status[0] == "no convergence"
    small, unit = stats.activation_odds_ratios(np.column_stack([tiny, tiny * 1e6]), patients, "htn", min_events=5)
    for key in ("or", "lo", "hi", "p"):
        assert small[key] == pytest.approx(unit[key], rel=1e-9)


def test_activation_odds_ratios_report_a_separating_concept_instead_of_a_number() -> None:
    generator = np.random.default_rng(3)
    n = 300
    patients = pd.DataFrame({"age": generator.uniform(20, 80, n), "sex": np.where(generator.random(n) < 0.5, "M", "F"),
                             "htn": (generator.random(n) < 0.4).astype(float)})
    separating = patients["htn"].to_numpy() + 0.01 * generator.random(n)
    fits = stats.activation_odds_ratios(np.column_stack([separating, generator.normal(size=n)]), patients, "htn",
                                        min_events=5)
    assert fits[0] == {"skipped": "htn: logistic regression could not be fitted (separation)"}
    assert "or" in fits[1]


def test_activation_odds_ratio_per_sd_is_scale_free_and_silent_for_a_tiny_activation_scale() -> None:
    """A concept firing at 1e-3 makes the (unused) per-5-unit OR overflow; the per-SD OR must not change."""
    generator = np.random.default_rng(1)
    n = 600
    patients = pd.DataFrame({"age": generator.uniform(20, 80, n),
                             "sex": np.where(generator.random(n) < 0.5, "M", "F")})
    effect = generator.normal(size=n)
    patients["htn"] = (generator.random(n) < 1 / (1 + np.exp(-(effect - 0.5)))).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        tiny, unit = stats.activation_odds_ratios(np.column_stack([effect * 1e-3, effect]), patients, "htn",
                                                  min_events=5)
    for key in ("or", "lo", "hi"):
        assert np.isfinite(tiny[key]) and tiny[key] == pytest.approx(unit[key], rel=1e-4)


def test_spearman_ci_covers_rho_and_narrows_with_n() -> None:
    lo, hi = stats.spearman_ci(0.5, 30)
    lo2, hi2 = stats.spearman_ci(0.5, 300)
    assert lo < lo2 < 0.5 < hi2 < hi
    assert all(np.isnan(stats.spearman_ci(0.5, 3)))


def test_quantise_round_trips_within_half_a_step_and_keeps_nan() -> None:
    values = np.array([0.0, 1.5, -3.0, np.nan, 2.9])
    packed = quantise(values)
    back = dequantise(packed)
    assert np.isnan(back[3])
    assert np.nanmax(np.abs(back - values)) <= packed["s"] / 2 + 1e-12


# ---- assembled data ----------------------------------------------------------------------------------

def test_every_live_concept_has_a_complete_card(built: tuple[RunDir, dict]) -> None:
    _, data = built
    assert data["available"] and data["K"] == K
    assert data["n_live"] == len(data["concepts"]) > 0
    for card in data["concepts"]:
        assert {"density", "hist", "top", "quantiles", "effect", "morph", "pulses", "rel", "mix"} <= set(card)
        assert 0 < card["density"] <= 1 and sum(card["hist"]["counts"]) == card["n_active"]
        assert {"lag1", "consistency", "matched_cos"} == set(card["rel"])
        shown = card["top"] + [w for rows in card["quantiles"] for w in rows]
        assert all(str(w) in data["windows"] for w in shown)


def test_top_windows_are_the_largest_with_at_most_two_per_patient(built: tuple[RunDir, dict]) -> None:
    _, data = built
    for card in data["concepts"]:
        windows = [data["windows"][str(w)] for w in card["top"]]
        acts = [dict(map(tuple, w["act"]))[card["id"]] for w in windows]
        assert acts == sorted(acts, reverse=True)
        assert max(pd.Series([w["p"] for w in windows]).value_counts()) <= TOP_PER_PATIENT


def test_quantile_examples_are_graded(built: tuple[RunDir, dict]) -> None:
    _, data = built
    card = max(data["concepts"], key=lambda c: c["n_active"])
    levels = [[dict(map(tuple, data["windows"][str(w)]["act"]))[card["id"]] for w in ws] for ws in card["quantiles"]]
    assert len(levels) == 4
    for low, high in itertools.pairwise(levels):
        assert max(low) <= min(high)


def test_age_effects_use_the_age_model_and_missing_inputs_say_why(built: tuple[RunDir, dict]) -> None:
    _, data = built
    by_id = {c["id"]: c for c in data["concepts"]}
    for concept, coef in ((2, 4.0), (3, -2.5), (5, 1.0)):
        if concept in by_id:
            assert by_id[concept]["effect"]["age"]["coef"] == coef
    zero = [c for c in data["concepts"] if c["id"] not in (2, 3, 5)]
    assert all(c["effect"]["age"]["coef"] == 0 and c["effect"]["age"]["sd"] == 0 for c in zero)
    for card in data["concepts"]:
        for label in ("htn", "t2d"):
            effect = card["effect"][label]
            assert "na" in effect or effect["lo"] <= effect["or"] <= effect["hi"]


def test_grounded_concepts_take_the_grounding_pulses_others_are_computed(built: tuple[RunDir, dict]) -> None:
    run_dir, data = built
    with np.load(run_dir.concept_pulses) as pulses:
        grounded = {int(c): i for i, c in enumerate(pulses["concepts"])}
        high = pulses["high_mean"]
    for card in data["concepts"]:
        if "reason" in card["pulses"]:
            continue
        if card["id"] in grounded:
            assert card["pulses"]["src"].startswith("grounding stage")
            assert np.allclose(dequantise(card["pulses"]["high"]), high[grounded[card["id"]]], atol=0.01)
        else:
            assert card["pulses"]["src"].startswith("computed here")


def test_patient_ids_never_appear_in_clear(built: tuple[RunDir, dict]) -> None:
    run_dir, data = built
    text = dashboard_json(data)
    assert not any(pid in text for pid in io.read_parquet(run_dir.meta)["patient_id"].unique())
    assert "<" not in text
    assert json.loads(text)["n_live"] == data["n_live"]


def test_missing_seed_shows_a_reason_and_held_out_augmentations_are_preferred(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    add_model_and_embeddings(run_dir)
    run_dir.stsae_checkpoint("full", K, 1).unlink()
    rel = build_dashboard(run_dir, dashboard_config())["concepts"][0]["rel"]
    assert "other seed" in rel["matched_cos"]["na"]
    assert "training augmentations" in rel["consistency"]["note"]
    assert "v" in rel["lag1"]
    held_out = run_dir.embeddings_dir / "z_aug_heldout.npy"
    io.save_npy(held_out, np.load(run_dir.z))  # identical to z: every concept fires exactly as on z
    rel = build_dashboard(run_dir, dashboard_config())["concepts"][0]["rel"]
    assert "held-out augmentations" in rel["consistency"]["note"] and rel["consistency"]["v"] == 1.0


def test_no_main_model_makes_the_dashboard_unavailable_with_the_file_named(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    data = build_dashboard(run_dir, dashboard_config())
    assert data["available"] is False
    assert f"stsae-full-K{K}-s0" in data["reason"]


def test_the_example_pool_is_capped(built: tuple[RunDir, dict]) -> None:
    _, data = built
    assert len(data["windows"]) <= MAX_POOL_WINDOWS
    assert example_counts(16) == (6, 5)
    for n_live in (16, 128, 1024, 4096, 8192):
        n_top, per_bin = example_counts(n_live)
        assert n_top >= 1 and n_live * (n_top + 4 * per_bin) <= max(MAX_POOL_WINDOWS, n_live)


def test_morphology_rows_come_from_the_grounding_table_or_are_computed_for_the_rest(
        built: tuple[RunDir, dict]) -> None:
    run_dir, data = built
    table = pd.read_csv(run_dir.concept_morphology)
    by_id = {c["id"]: c for c in data["concepts"]}
    assert 3 in by_id, "concept 3 is in the fixture's grounding table"
    expected = table[table["concept"] == 3]
    assert [r[0] for r in by_id[3]["morph"]] == expected["feature"].tolist()
    assert np.allclose([r[1] for r in by_id[3]["morph"]], expected["rho"], atol=1e-3)
    others = [c for c in data["concepts"] if c["id"] != 3]
    assert all(isinstance(c["morph"], list) and c["morph"][0][5] > 3 for c in others)
    for row in by_id[3]["morph"] + others[0]["morph"]:
        if row[2] is not None:
            assert row[2] <= row[1] <= row[3]


def test_large_runs_encode_whole_patients_up_to_the_cell_cap(monkeypatch: pytest.MonkeyPatch,
                                                            built: tuple[RunDir, dict]) -> None:
    run_dir, _ = built
    monkeypatch.setattr(dashboard, "MAX_CODE_CELLS", 60 * K)
    data = build_dashboard(run_dir, dashboard_config())
    index = io.read_parquet(run_dir.index)
    assert data["n_windows_all"] == len(index) and 0 < data["n_windows"] <= 60
    rows = dashboard.patient_sample(index, K, np.random.default_rng(0))
    chosen = index.iloc[rows]
    assert len(rows) <= 60 and chosen["patient_id"].nunique() >= 1
    complete = index[index["patient_id"].isin(chosen["patient_id"])]
    assert len(complete) == len(chosen), "a sampled patient must bring all of its windows"


def test_a_run_without_test_patients_still_gets_cards_with_reasons(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    add_model_and_embeddings(run_dir)
    index = io.read_parquet(run_dir.index)
    io.write_parquet(run_dir.index, index.assign(split=index["split"].replace("test", "val")))
    data = build_dashboard(run_dir, dashboard_config())
    assert data["n_test"] == 0
    rel = data["concepts"][0]["rel"]
    assert rel["lag1"]["na"] == "fewer than 3 test windows" and rel["consistency"]["na"] == "no test windows"


def test_mix_counts_cover_the_same_top_windows(built: tuple[RunDir, dict]) -> None:
    _, data = built
    for card in data["concepts"]:
        totals = {name: sum(counts.values()) for name, counts in card["mix"].items()}
        assert len(set(totals.values())) == 1 and 0 < totals["sex"] <= dashboard.MIX_TOP
        assert set(card["mix"]["sex"]) <= {"M", "F", "unknown"}


def test_report_stage_embeds_the_dashboard_of_the_main_model(tmp_path: Path) -> None:
    run_dir = write_dashboard_run(tmp_path / "run", tmp_path)
    report_stage.run(StageContext(dashboard_config(), run_dir, "fingerprint"))
    html = run_dir.report_html.read_text()
    found = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', html, re.DOTALL)
    assert found and json.loads(found.group(1))["model"] == f"stsae-full-K{K}-s0"
    assert 'id="concept-table"' in html


def test_a_broken_grounding_file_is_an_error_naming_it(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    add_model_and_embeddings(run_dir)
    run_dir.concept_pulses.write_bytes(b"not an npz")
    with pytest.raises(InputDataError, match=r"concept_pulses\.npz"):
        build_dashboard(run_dir, dashboard_config())


def test_the_same_run_gives_the_same_dashboard(built: tuple[RunDir, dict]) -> None:
    run_dir, data = built
    assert dashboard_json(build_dashboard(run_dir, dashboard_config())) == dashboard_json(data)


def test_histogram_of_a_concept_that_fires_once_or_at_one_value_puts_all_counts_in_one_bin() -> None:
    from stsae.report.dashboard import HIST_BINS, _histogram

    for activation in (np.array([0, 0, 3.7], dtype=np.float32), np.full(5, 123.456, dtype=np.float32)):
        result = _histogram(activation)
        assert len(result["counts"]) == HIST_BINS and result["counts"][0] == (activation > 0).sum()
