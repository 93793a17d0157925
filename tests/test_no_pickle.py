"""No model file is ever unpickled: crafted pickles anywhere in a run directory (the old `.joblib` baseline
names included) never run during the baselines, evaluate and age stages."""

from __future__ import annotations

import pickle

import pytest

from stsae.config import Config
from stsae.errors import InputDataError
from stsae.pipeline.runner import StageContext
from stsae.rundir import RunDir
from stsae.stages import age as age_stage
from stsae.stages import baselines as baselines_stage
from stsae.stages import evaluate as evaluate_stage
from test_baselines import MarkerPayload
from test_evaluate_stage import _write_inputs
from test_registry import write_stsae


def _context(tmp_path) -> StageContext:
    config = Config.model_validate({
        "train": {"d_dict": 32, "k": 4, "seeds": [0], "d_dict_sweep": [32]},
        "baselines": {"methods": ["pca", "nmf"], "n_components": [4, 8], "max_iter": 100},
        "eval": {"stability_subsamples": 0},
        "aging": {"cv_folds": 3, "l1_ratios": [0.5, 1.0], "min_events": 2, "bias_correction_on": "oof_train"}})
    return StageContext(config, RunDir(tmp_path / "run"), fingerprint="test", force=True)


def _plant_pickles(run_dir: RunDir, marker: str) -> None:
    payload = pickle.dumps(MarkerPayload(marker))
    for relative in ("models/baselines/pca-n4.joblib", "models/baselines/nmf-n8.joblib",
                     "models/baselines/zz-extra.joblib", "models/baselines/ica-n4.safetensors",
                     "models/stsae-evil-K32-s0.pt", "models/model.pkl", "eval/leaderboard.pkl", "evil.joblib"):
        path = run_dir.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)


@pytest.mark.slow
def test_planted_pickles_never_run_during_baselines_evaluate_and_age(tmp_path) -> None:
    ctx = _context(tmp_path)
    z_train = _write_inputs(ctx.run_dir)
    write_stsae(ctx.run_dir, z_train, "full", 32, 0)
    marker = tmp_path / "unpickled"
    _plant_pickles(ctx.run_dir, str(marker))
    for stage in (baselines_stage, evaluate_stage, age_stage):
        stage.run(ctx)
        assert not marker.exists(), stage.__name__
    assert ctx.run_dir.leaderboard.is_file() and ctx.run_dir.associations.is_file()


def test_a_pickle_under_a_configured_baseline_name_is_refused_not_run(tmp_path) -> None:
    ctx = _context(tmp_path)
    z_train = _write_inputs(ctx.run_dir)
    write_stsae(ctx.run_dir, z_train, "full", 32, 0)
    baselines_stage.run(ctx)
    marker = tmp_path / "unpickled"
    ctx.run_dir.baseline("nmf", 8).write_bytes(pickle.dumps(MarkerPayload(str(marker))))
    with pytest.raises(InputDataError, match=r"nmf-n8\.safetensors"):
        evaluate_stage.run(ctx)
    assert not marker.exists()
