"""The baselines and evaluate stages on a tiny run directory written in the real file formats."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from stsae.config import Config
from stsae.eval.leaderboard import REASONS_KEY, ROW_KEYS, read_leaderboard_rows
from stsae.models.stsae import STSAE
from stsae.pipeline.runner import StageContext
from stsae.rundir import RunDir
from stsae.stages import baselines as baselines_stage
from stsae.stages import evaluate as evaluate_stage
from stsae.train.trainer import Member
from stsae.utils import io
from test_registry import write_stsae

N_PATIENTS, PER_PATIENT = 24, 10


def _write_inputs(run_dir: RunDir) -> np.ndarray:
    """Embeddings carrying age (per patient) and heart rate (drifting per window); returns z[train]."""
    gen = np.random.default_rng(0)
    patient = np.repeat(np.arange(N_PATIENTS), PER_PATIENT)
    age = gen.uniform(20, 80, N_PATIENTS)[patient]
    hr = 60 + 10 * np.sin(np.arange(len(patient)) / 3) + gen.normal(0, 1, len(patient))
    factors = np.column_stack([(age - 50) / 15, (hr - 60) / 7, gen.standard_normal((len(patient), 4))])
    z = (factors @ gen.standard_normal((6, 512)) + 4.0).astype(np.float32)
    z_aug = (z + 0.05 * gen.standard_normal(z.shape)).astype(np.float32)
    split = np.array(["train"] * 14 + ["val"] * 2 + ["test"] * 8)[patient]
    ids = np.array([f"p{p:02d}" for p in patient])
    index = pd.DataFrame({"window_id": np.arange(len(patient)), "patient_id": ids, "record_id": ids,
                          "segment_idx": np.tile(np.arange(PER_PATIENT), N_PATIENTS), "split": split})
    meta = index.assign(age=age, hr_bpm=hr, htn=(age > 50).astype(float), t2d=0.0,
                        sex=np.where(patient % 2, "F", "M"))
    io.save_npy(run_dir.z, z)
    io.save_npy(run_dir.z_aug, z_aug)
    io.write_parquet(run_dir.index, index)
    io.write_parquet(run_dir.meta, meta)
    return z[split == "train"]


def _context(tmp_path, **eval_overrides) -> StageContext:
    config = Config.model_validate({
        "baselines": {"methods": ["pca", "nmf"], "n_components": [4, 8], "max_iter": 100},
        "train": {"d_dict": 32, "k": 4, "seeds": [0, 1], "d_dict_sweep": [32]},
        "eval": {"stability_subsamples": 0, "n_bootstrap": 20, **eval_overrides}})
    return StageContext(config, RunDir(tmp_path), fingerprint="test")


@pytest.fixture
def run_dir_with_models(tmp_path) -> StageContext:
    ctx = _context(tmp_path)
    z_train = _write_inputs(ctx.run_dir)
    for variant, seed in (("full", 0), ("full", 1), ("no_smooth", 0)):
        write_stsae(ctx.run_dir, z_train, variant, 32, seed)
    baselines_stage.run(ctx)
    return ctx


def test_baselines_stage_writes_one_file_per_method_and_size(run_dir_with_models: StageContext) -> None:
    names = sorted(p.name for p in run_dir_with_models.run_dir.baselines_dir.iterdir())
    assert names == [f"{stem}{suffix}" for stem in ("nmf-n4", "nmf-n8", "pca-n4", "pca-n8")
                     for suffix in (".json", ".safetensors")]


@pytest.mark.slow
def test_evaluate_writes_complete_rows_and_pareto(run_dir_with_models: StageContext) -> None:
    ctx = run_dir_with_models
    evaluate_stage.run(ctx)
    board = io.read_json(ctx.run_dir.leaderboard)
    assert board["schema_version"] == 2 and board["main_model"] == "stsae-full-K32-s0"
    rows = board["rows"]
    assert [row.to_json() for row in read_leaderboard_rows(ctx.run_dir.leaderboard)] == rows
    assert len(rows) == 3 + 4 + 2
    assert [r["model"] for r in rows if r["is_main"]] == ["stsae-full-K32-s0"]
    for row in rows:
        assert set(ROW_KEYS) <= set(row) and REASONS_KEY in row
        for key in ("ev", "l0", "never_fired_test_fraction", "consistency_jaccard", "consistency_cosine",
                    "lag1_within_record", "between_record_variance_share"):
            assert row[key] is not None, (row["model"], key)
        assert row["n_test_windows"] == 8 * PER_PATIENT
        assert row["consistency_heldout_aug"] is None and "heldout" in row[REASONS_KEY]["consistency_heldout_aug"]
        assert set(row["probe"]) == {"age", "hr_bpm", "htn", "t2d", "sex"}
        assert row["probe"]["t2d"]["value"] is None and "one class" in row[REASONS_KEY]["probe.t2d"]
        assert row["probe"]["age"]["raw_value"] > 0.5
        assert {"age_sex_value", "adjusted_value", "increment", "increment_ci"} <= set(row["probe"]["htn"])
    matched = [r for r in rows if r["matched_sparsity"]]
    assert {r["k_active"] for r in matched} == {4} and all(r["l0"] <= 4 for r in matched)
    assert sorted(r["model"] for r in matched) == ["nmf-n8", "pca-n8"]  # n4 at k = 4 is the dense code
    full = [r for r in rows if r["variant"] == "full"]
    assert all(r["seed_stability_mean_cos"] is not None and r["stability_null_data_mean_cos"] is not None
               and 0 < r["stability_live_atoms"] <= 32 for r in full)
    ablation = next(r for r in rows if r["variant"] == "no_smooth")
    assert ablation["seed_stability_mean_cos"] is None and "seed_stability_mean_cos" in ablation[REASONS_KEY]
    assert set(board["stability_null"]["32"]) >= {"data_init", "gaussian_train_covariance", "isotropic"}
    assert board["lag1_within_record_reference_hr"] is not None
    pareto = io.read_json(ctx.run_dir.pareto)
    assert {p["model"] for p in pareto["points"]} == {r["model"] for r in rows
                                                      if r["family"] == "stsae" or r["matched_sparsity"]}
    assert pareto["front"] and set(pareto["front"]) <= {p["model"] for p in pareto["points"]}


@pytest.mark.slow
def test_models_scored_on_two_threads_write_the_leaderboard_of_one(run_dir_with_models: StageContext,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The models after the main one are scored on a thread pool beside the stability refits; the rows,
    their order and every number are those of scoring one model after another."""
    ctx = run_dir_with_models
    ctx.config.eval.stability_subsamples = 1
    written = {}
    for threads in (1, 2):
        monkeypatch.setattr(evaluate_stage, "SCORING_THREADS", threads)
        evaluate_stage.run(ctx)
        written[threads] = (ctx.run_dir.leaderboard.read_bytes(), ctx.run_dir.pareto.read_bytes())
    assert written[1] == written[2]
    rows = io.read_json(ctx.run_dir.leaderboard)["rows"]
    assert rows[0]["is_main"] and rows[0]["subsample_stability_mean_cos"] is not None


def test_whole_patient_subset_respects_the_cap_and_keeps_patients_whole() -> None:
    rows = np.arange(100)
    patients = np.repeat(np.arange(10), 10)
    chosen = evaluate_stage.whole_patient_subset(rows, patients, 35, np.random.default_rng(0))
    assert len(chosen) == 30 and np.all(np.bincount(patients[chosen]) % 10 == 0)


def test_main_model_is_the_first_configured_seed(run_dir_with_models: StageContext) -> None:
    from stsae.models.registry import list_models

    infos = list_models(run_dir_with_models.run_dir, run_dir_with_models.config.baselines)
    train = run_dir_with_models.config.train
    assert evaluate_stage.main_stsae(infos, train).name == "stsae-full-K32-s0"
    reordered = train.model_copy(update={"seeds": [1, 0]})
    assert evaluate_stage.main_stsae(infos, reordered).name == "stsae-full-K32-s1"


def test_stability_refits_train_on_half_the_train_patients(run_dir_with_models: StageContext,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    def fake_fit_group(members, cfg, d_dict, steps=None, device=None):
        fitted = []
        for member in members:
            seen.append(len(np.unique(member.train.pairs[:, 0] // PER_PATIENT)))
            assert (member.variant, d_dict, steps) == ("full", 32, 7) and member.val is None
            model = STSAE(512, d_dict, "topk", cfg.k, generator=torch.Generator().manual_seed(member.seed))
            model.init_from_data(np.asarray(member.train.z[:50]), torch.Generator().manual_seed(member.seed))
            fitted.append((model, {}))
        return fitted

    monkeypatch.setitem(sys.modules, "stsae.train.trainer",
                        types.SimpleNamespace(fit_group=fake_fit_group, Member=Member))
    from stsae.data.store import load_embeddings
    from stsae.models.registry import list_models

    ctx = run_dir_with_models
    cfg = ctx.config.eval.model_copy(update={"stability_subsamples": 2, "stability_steps": 7})
    main = evaluate_stage.main_stsae(list_models(ctx.run_dir, ctx.config.baselines), ctx.config.train)
    data, _ = evaluate_stage._prepare(ctx, load_embeddings(ctx.run_dir), cfg, 0)
    dictionaries = evaluate_stage.subsample_dictionaries(data, main, cfg, 0)
    assert seen == [7, 7] and all(0 < len(d) <= 32 and d.shape[1] == 512 for d in dictionaries)


def test_subsample_refits_default_to_the_main_models_step_budget(run_dir_with_models: StageContext,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen_steps: list[int | None] = []

    def fake_fit_group(members, cfg, d_dict, steps=None, device=None):
        seen_steps.append(steps)
        raise StopIteration

    monkeypatch.setitem(sys.modules, "stsae.train.trainer",
                        types.SimpleNamespace(fit_group=fake_fit_group, Member=Member))
    from stsae.data.store import load_embeddings
    from stsae.models.registry import list_models

    ctx = run_dir_with_models
    cfg = ctx.config.eval.model_copy(update={"stability_subsamples": 1})
    main = evaluate_stage.main_stsae(list_models(ctx.run_dir, ctx.config.baselines), ctx.config.train)
    data, _ = evaluate_stage._prepare(ctx, load_embeddings(ctx.run_dir), cfg, 0)
    with pytest.raises(StopIteration):
        evaluate_stage.subsample_dictionaries(data, main, cfg, 0)
    assert seen_steps == [5]  # train_config.steps of the main model's sidecar (written by write_stsae)


def test_probes_fit_on_train_patients_and_score_held_out_patients(run_dir_with_models: StageContext) -> None:
    from stsae.data.store import load_embeddings

    ctx = run_dir_with_models
    emb = load_embeddings(ctx.run_dir)
    data, _ = evaluate_stage._prepare(ctx, emb, ctx.config.eval, 0)
    split = emb.index["split"].to_numpy()[data.probe_rows]
    assert set(split[data.probes.fit]) == {"train"} and set(split[~data.probes.fit]) == {"val", "test"}
    assert not set(data.probes.groups[data.probes.fit]) & set(data.probes.groups[~data.probes.fit])
    assert set(emb.index["split"].to_numpy()[data.rows]) == {"test"}


def test_probe_rows_are_capped_by_whole_patients(tmp_path) -> None:
    from stsae.data.store import load_embeddings

    ctx = _context(tmp_path, probe_max_rows=45)
    _write_inputs(ctx.run_dir)
    data, _ = evaluate_stage._prepare(ctx, load_embeddings(ctx.run_dir), ctx.config.eval, 0)
    assert data.probes.fit.sum() == 40 and (~data.probes.fit).sum() == 40
    assert np.all(np.unique(data.probes.groups, return_counts=True)[1] == PER_PATIENT)


def test_baseline_with_at_most_k_components_gets_no_matched_row(caplog: pytest.LogCaptureFixture) -> None:
    info = types.SimpleNamespace(name="pca-n16", family="pca", variant="pca", d_dict=16, seed=None)
    with caplog.at_level("INFO"):
        assert evaluate_stage._matched_row(info, 16) is None
    assert "dense code" in caplog.text
    matched = evaluate_stage._matched_row(types.SimpleNamespace(**{**vars(info), "d_dict": 32}), 16)
    assert matched is not None and matched.matched_sparsity and matched.k_active == 16 and matched.d_dict == 32


@pytest.mark.parametrize(("init", "margin_above_isotropic"), [("data", (0.3, 1.0)), ("random", (-0.1, 0.1))])
def test_untrained_dictionaries_follow_the_models_own_initialisation(
        run_dir_with_models: StageContext, init: str, margin_above_isotropic: tuple[float, float]) -> None:
    """The fixture's embeddings have rank 6: two dictionaries from the trainer's own initialisation
    (different seeds, no training) match far above random unit vectors when atoms start as data rows,
    and like random unit vectors when they start as random directions (the default since issue 20)."""
    from stsae.data.store import load_embeddings
    from stsae.eval.stability import random_null, stability_against
    from stsae.models.registry import list_models

    ctx = run_dir_with_models
    main = evaluate_stage.main_stsae(list_models(ctx.run_dir, ctx.config.baselines), ctx.config.train)
    sidecar = main.path.with_suffix(".json")
    info = json.loads(sidecar.read_text())
    info["train_config"]["init"] = init
    sidecar.write_text(json.dumps(info))
    first, second = evaluate_stage.untrained_dictionaries(load_embeddings(ctx.run_dir), main, 32, 0)
    assert not np.allclose(first, second)
    above = stability_against(first, [second]).mean_cos - random_null(32, 512, np.random.default_rng(0)).mean_cos
    assert margin_above_isotropic[0] < above < margin_above_isotropic[1]


@pytest.mark.slow
def test_reordered_seeds_make_the_first_listed_seed_the_main_model_in_the_leaderboard(tmp_path) -> None:
    ctx = _context(tmp_path)
    ctx = StageContext(ctx.config.model_copy(update={"train": ctx.config.train.model_copy(
        update={"seeds": [1, 0]})}), ctx.run_dir, fingerprint="test")
    z_train = _write_inputs(ctx.run_dir)
    for seed in (0, 1):
        write_stsae(ctx.run_dir, z_train, "full", 32, seed)
    baselines_stage.run(ctx)
    evaluate_stage.run(ctx)
    board = io.read_json(ctx.run_dir.leaderboard)
    assert board["main_model"] == "stsae-full-K32-s1"
    assert [r["seed"] for r in board["rows"] if r["is_main"]] == [1]
    from stsae.report.scorecard import leaderboard_rows, main_row
    main = main_row(leaderboard_rows(ctx.run_dir))
    assert main is not None and main.model == "stsae-full-K32-s1"
