"""The `age` and `ground` stages end to end on a tiny run directory written in the real formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.config import Config
from stsae.errors import StsaeError
from stsae.grounding.morphology import FEATURES
from stsae.models.registry import ModelInfo
from stsae.pipeline.runner import StageContext
from stsae.rundir import RunDir
from stsae.stages import age as age_stage
from stsae.stages import ground as ground_stage
from stsae.utils import io

N_PATIENTS, WINDOWS_PER_PATIENT, K = 60, 4, 16
FS, N_SAMPLES = 125.0, 1250


class FakeModel:
    """A concept model whose concepts read embedding dimensions [start, start + k); the first 4 carry age."""

    def __init__(self, k: int, start: int = 0):
        self.k, self.start = k, start

    def encode(self, z: np.ndarray) -> np.ndarray:
        assert z.dtype == np.float32 and z.shape[1] == 512
        return np.maximum(z[:, self.start : self.start + self.k], 0).astype(np.float32)


def window(vascular_age: float, period_s: float, seed: int) -> np.ndarray:
    """A 10 s pulse train whose reflected wave grows and arrives earlier with vascular age."""
    stiff = (vascular_age - 20) / 70
    t = (np.arange(N_SAMPLES) / FS / period_s) % 1.0
    x = np.exp(-0.5 * ((t - 0.2) / 0.05) ** 2) + (0.3 + 0.3 * stiff) * np.exp(
        -0.5 * ((t - 0.45 + 0.1 * stiff) / 0.06) ** 2
    )
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(N_SAMPLES)
    return ((x - x.mean()) / x.std()).astype(np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    root = RunDir(tmp_path_factory.mktemp("run"))
    gen = np.random.default_rng(0)
    age = gen.uniform(20, 85, N_PATIENTS)
    acceleration = gen.normal(0, 4, N_PATIENTS)
    split = np.array(["train", "train", "train", "val", "test"] * (N_PATIENTS // 5))
    rows = []
    for p in range(N_PATIENTS):
        for s in range(WINDOWS_PER_PATIENT):
            rows.append(
                {
                    "window_id": len(rows),
                    "patient_id": f"p{p:03d}",
                    "record_id": f"p{p:03d}-r0",
                    "segment_idx": s,
                    "t_start_s": 10.0 * s,
                    "fs_orig": FS,
                    "source": "synthetic",
                    "split": split[p],
                    "age": age[p],
                    "sex": "M" if p % 2 else "F",
                    "htn": float(p % 3 == 0),
                    "t2d": float(p % 4 == 0),
                    "vascular_acceleration": acceleration[p],
                }
            )
    meta = pd.DataFrame(rows)
    vascular = (meta["age"] + meta["vascular_acceleration"]).to_numpy()
    meta["reflection_time"] = 0.30 - 0.002 * vascular
    meta["aix"] = 0.3 + 0.007 * vascular + gen.normal(0, 0.01, len(meta))
    meta["notch_depth"] = 0.2 - 0.002 * vascular
    meta["hr_bpm"] = 60 + 20 * gen.random(len(meta))
    windows = np.stack([window(v, 0.7 + 0.3 * gen.random(), i) for i, v in enumerate(vascular)])
    z = gen.normal(size=(len(meta), 512)).astype(np.float32)
    z[:, :4] += (vascular[:, None] / 20).astype(np.float32)
    io.save_npy(root.windows, windows)
    io.write_parquet(root.meta, meta)
    io.save_npy(root.z, z)
    io.save_npy(root.z_aug, z + np.float32(0.01))
    io.write_parquet(root.index, meta[["window_id", "patient_id", "record_id", "segment_idx", "split"]])
    return root


def patch_registry(patch: pytest.MonkeyPatch) -> None:
    """Serve two ST-SAE seeds, an age-reading PCA and a noise-reading ICA through the registry functions."""
    infos = [
        ModelInfo(f"stsae-full-K{K}-s0", "stsae", "full", K, 0, Path("stsae.safetensors")),
        ModelInfo(f"stsae-full-K{K}-s1", "stsae", "full", K, 1, Path("stsae-s1.safetensors")),
        ModelInfo("ica-n8", "ica", "ica", 8, 0, Path("ica.joblib")),
        ModelInfo("pca-n8", "pca", "pca", 8, 0, Path("pca.joblib")),
    ]
    models = {Path("stsae.safetensors"): FakeModel(K), Path("stsae-s1.safetensors"): FakeModel(K, start=1),
              Path("ica.joblib"): FakeModel(8, start=100), Path("pca.joblib"): FakeModel(8)}
    for module in (age_stage, ground_stage):
        patch.setattr(module, "list_models", lambda run_dir, baselines: infos)
        patch.setattr(module, "load_concept_model", lambda path: models[Path(path)])


def config(seeds: tuple[int, ...] = (0,), **aging: object) -> Config:
    return Config.model_validate(
        {
            "train": {"d_dict": K, "k": 4, "seeds": list(seeds), "d_dict_sweep": [K]},
            "aging": {"cv_folds": 3, "l1_ratios": [0.5, 1.0], "min_events": 2, **aging},
            "grounding": {"top_concepts": 3, "n_bootstrap": 20, "max_windows": 200},
        }
    )


@pytest.fixture(scope="module")
def staged(run_dir: RunDir) -> RunDir:
    """run_dir after the age stage and then the ground stage."""
    with pytest.MonkeyPatch.context() as patch:
        patch_registry(patch)
        age_stage.run(StageContext(config(), run_dir, fingerprint="test"))
        ground_stage.run(StageContext(config(), run_dir, fingerprint="test"))
    return run_dir


def test_age_stage_writes_contract_predictions_and_delta_age(staged: RunDir) -> None:
    predictions = pd.read_parquet(staged.predictions)
    delta = pd.read_parquet(staged.delta_age)
    assert {"patient_id", "split", "age", "age_pred", "age_pred_corrected", "sex", "htn", "t2d"} <= set(
        predictions
    )
    assert {"patient_id", "split", "age", "sex", "htn", "t2d", "delta_age", "vascular_acceleration"} <= set(
        delta
    )
    assert set(predictions["split"]) == {"val", "test"}
    assert len(predictions) == N_PATIENTS * 2 // 5


def test_age_model_json_has_one_coefficient_per_concept(staged: RunDir) -> None:
    model = json.loads(staged.age_model.read_text())
    assert set(model) == {"model", "coef", "mean", "scale", "low", "high", "intercept", "alpha", "l1_ratio",
                          "selected", "stability"}
    assert model["stability"] is None
    assert model["model"] == f"stsae-full-K{K}-s0"
    assert len(model["coef"]) == K
    assert model["selected"] == [i for i, c in enumerate(model["coef"]) if c != 0]


def test_associations_json_covers_every_predictor_and_condition(staged: RunDir) -> None:
    report = json.loads(staged.associations.read_text())
    assert set(report["metrics"]) == {"mae", "r", "r2", "delta_age_age_r", "delta_age_planted_raw_r",
                                      "delta_age_planted_partial_r"}
    assert report["bias_correction"]["fitted_on"] == "validation"
    assert report["association_splits"] == ["val", "test"]
    assert report["predictors"]["best_baseline"]["model"] == "pca-n8"  # ica-n8 reads noise dimensions
    assert report["predictors"]["best_baseline"]["screen_ridge_val_mae"] > 0
    for predictor in ("concepts", "raw_embedding", "best_baseline"):
        for condition in ("htn", "t2d"):
            entry = report["associations"][predictor][condition]
            assert set(entry) in ({"skipped"}, {"or_per_5y", "ci_low", "ci_high", "or_per_sd", "or_per_sd_ci_low",
                                                "or_per_sd_ci_high", "delta_age_sd", "p", "n"})


def test_planted_morphology_reference_predictor_runs_on_synthetic_meta_only(staged: RunDir) -> None:
    reference = json.loads(staged.associations.read_text())["predictors"]["planted_morphology"]
    assert reference["model"] == "planted_morphology"
    assert reference["delta_age_planted_partial_r"] > 0.9  # the fixture's morphology is vascular age plus tiny noise
    meta = pd.read_parquet(staged.meta)
    features = age_stage.planted_morphology_rows(meta, meta["window_id"].to_numpy()[::-1])
    assert features.shape == (len(meta), 5)
    np.testing.assert_array_equal(features[:, 4], (meta["sex"] == "F").to_numpy(float)[::-1])
    real_meta = pd.read_parquet(staged.meta).drop(columns=["aix"])
    assert age_stage.planted_morphology_rows(real_meta, real_meta["window_id"].to_numpy()) is None


def test_concept_age_model_tracks_age_on_test(staged: RunDir) -> None:
    metrics = json.loads(staged.associations.read_text())["metrics"]
    assert metrics["r"] > 0.8


def test_ground_stage_writes_concept_pulses_for_top_concepts(staged: RunDir) -> None:
    model = json.loads(staged.age_model.read_text())
    with np.load(staged.concept_pulses) as pulses:
        concepts = pulses["concepts"]
        assert 1 <= len(concepts) <= 3
        assert np.all(np.abs(np.asarray(model["coef"])[concepts]) > 0)
        for group in ("high", "low", "silent"):
            for stat in ("mean", "lo", "hi"):
                assert pulses[f"{group}_{stat}"].shape == (len(concepts), 100)
            assert pulses[f"n_{group}"].shape == (len(concepts),)
        assert np.all(pulses["n_high"] >= 2)
        for key in ("morphology_diff", "morphology_diff_silent"):
            assert pulses[key].shape == (len(concepts), len(FEATURES))


def test_ground_stage_morphology_covers_a_seeded_subsample(staged: RunDir) -> None:
    morphology = pd.read_parquet(staged.morphology)
    assert list(morphology.columns) == ["window_id", *FEATURES, "reason"]
    assert len(morphology) == 200 and morphology["window_id"].is_unique
    assert morphology["crest_time_s"].notna().mean() > 0.9


def test_ground_stage_correlation_table_has_q_values(staged: RunDir) -> None:
    table = pd.read_csv(staged.concept_morphology)
    assert list(table.columns) == ["concept", "feature", "rho", "p", "q", "n_patients"]
    assert set(table["feature"]) == set(FEATURES)
    assert table["n_patients"].max() <= N_PATIENTS


def test_missing_aging_model_variant_is_a_user_error(
    run_dir: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    patch_registry(monkeypatch)
    with pytest.raises(StsaeError, match=r"aging\.model"):
        age_stage.run(StageContext(config(model="no_div"), run_dir, fingerprint="test"))


def test_age_stage_explains_the_main_model_of_train_seeds(run_dir: RunDir, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    copy = RunDir(shutil.copytree(run_dir.root, tmp_path / "run"))
    patch_registry(monkeypatch)
    age_stage.run(StageContext(config(seeds=(1, 0)), copy, fingerprint="test"))
    assert json.loads(copy.age_model.read_text())["model"] == f"stsae-full-K{K}-s1"


def test_age_stage_records_stability_selection_with_its_pfer_bound(run_dir: RunDir, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    copy = RunDir(shutil.copytree(run_dir.root, tmp_path / "run"))
    patch_registry(monkeypatch)
    settings = config(stability_selection=True, stability_rounds=20, stability_pfer=3.0)
    age_stage.run(StageContext(settings, copy, fingerprint="test"))
    model = json.loads(copy.age_model.read_text())
    stability = model["stability"]
    assert stability["pi_thr"] == 0.8 and stability["q"] <= stability["q_max"]
    assert stability["pfer_bound"] == pytest.approx(stability["q"] ** 2 / (0.6 * K))
    assert stability["pfer_bound"] <= 3.0
    assert set(model["selected"]) <= set(stability["selected"])
