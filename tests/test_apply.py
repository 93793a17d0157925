"""`stsae apply`: run A's frozen encoder settings, concepts, age model and bias correction on cohort B."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from apply_runs import build_source_run, tiny_config, write_config
from stsae.aging.age_pred import AgePredictor, age_model_record, age_predictor_from_record
from stsae.apply.cohort import SparseCodeRecorder
from stsae.apply.layout import AppliedDir
from stsae.apply.source import load_frozen_models, read_source
from stsae.cli import app
from stsae.config import config_to_yaml
from stsae.data.store import load_embeddings
from stsae.errors import StsaeError
from stsae.rundir import RunDir
from stsae.utils import io

runner = CliRunner()


def _fake_source(root: Path, sha256: str, *overrides: str) -> Path:
    """Just what the compatibility check reads: A's resolved config and manifest encoder identity."""
    root.mkdir()
    (root / "config.resolved.yaml").write_text(config_to_yaml(tiny_config(*overrides)))
    io.write_json(root / "manifest.json", {"encoder": {"weights": None, "sha256": sha256}})
    return root


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _refused(tmp_path: Path, source: Path, config: Path) -> str:
    target = tmp_path / "B"
    target.mkdir()
    io.write_json(target / "manifest.json", {"run_name": "earlier"})
    before = _digest(target)
    result = runner.invoke(app, ["apply", "--from-run", str(source), "--config", str(config),
                                 "--run-dir", str(target), "-q"])
    assert result.exit_code == 2
    assert _digest(target) == before
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_mismatched_encoder_sha256_is_refused_naming_the_key(tmp_path: Path) -> None:
    weights = tmp_path / "other.pt"
    weights.write_bytes(b"not the source run's encoder")
    source = _fake_source(tmp_path / "A", "ab" * 32)
    config = write_config(tmp_path / "b.yaml", f"encoder.weights={weights}")
    line = _refused(tmp_path, source, config)
    assert line.startswith("error: encoder.weights: sha256")


@pytest.mark.parametrize("override, key", [("data.windowing.band_low_hz=0.7", "data.windowing.band_low_hz"),
                                           ("data.windowing.filter=cheby2", "data.windowing.filter"),
                                           ("data.windowing.stride_s=5.0", "data.windowing.stride_s")])
def test_mismatched_windowing_or_filter_is_refused_naming_the_key(tmp_path: Path, override: str, key: str) -> None:
    source = _fake_source(tmp_path / "A", "RANDOM")
    line = _refused(tmp_path, source, write_config(tmp_path / "b.yaml", override))
    assert line.startswith(f"error: {key}: differs")


def test_random_encoder_with_another_seed_is_refused(tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "A", "RANDOM")
    line = _refused(tmp_path, source, write_config(tmp_path / "b.yaml", "run.seed=7"))
    assert line.startswith("error: run.seed:")


def test_age_predictor_round_trips_through_age_model_json() -> None:
    g = np.random.default_rng(0)
    predictor = AgePredictor(mean=g.normal(size=6), scale=g.uniform(0.5, 2, 6), low=np.full(6, -1.5),
                             high=np.full(6, 1.5), coef=np.array([0, 2.5, 0, -1, 0, 0.3]),
                             intercept=51.7, alpha=0.1, l1_ratio=0.5, selected=np.array([1, 3, 5]))
    record = json.loads(json.dumps(age_model_record("m", predictor)))
    x = g.normal(size=(9, 6))
    assert np.array_equal(age_predictor_from_record(record, "age_model.json").predict(x), predictor.predict(x))


def test_age_model_without_standardisation_is_refused() -> None:
    refusal = r"age_model.json: no \['mean', 'scale', 'low', 'high'\].*rerun `stsae age --force`"
    with pytest.raises(StsaeError, match=refusal):
        age_predictor_from_record({"model": "m", "coef": [1.0], "intercept": 0.0}, "A/aging/age_model.json")


def test_sparse_code_recorder_keeps_every_nonzero_code() -> None:
    codes = np.array([[0, 1.5, 0], [0, 0, 0], [2.0, 0, -0.5]], dtype=np.float32)
    recorder = SparseCodeRecorder(lambda z: codes[: len(z)])
    recorder(np.zeros((3, 2), np.float32))
    indptr, concept, value = recorder.csr()
    dense = np.zeros_like(codes)
    for row in range(3):
        dense[row, concept[indptr[row]:indptr[row + 1]]] = value[indptr[row]:indptr[row + 1]]
    assert np.array_equal(dense, codes)
    assert recorder.firing_rates().tolist() == [1 / 3, 1 / 3, 0.0]


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, RunDir]:
    """Run A, then A applied to its own cohort (same config) in a new run directory B."""
    root = tmp_path_factory.mktemp("apply")
    source = build_source_run(root / "A")
    result = runner.invoke(app, ["apply", "--from-run", str(source.root), "-q",
                                 "--config", str(write_config(root / "b.yaml")), "--run-dir", str(root / "B")])
    assert result.exit_code == 0, result.output
    return source, RunDir(root / "B")


@pytest.mark.slow
def test_apply_to_own_cohort_reproduces_source_predictions_exactly(applied: tuple[RunDir, RunDir]) -> None:
    source, target = applied
    ours = io.read_parquet(source.predictions).set_index("patient_id")
    theirs = io.read_parquet(AppliedDir(target).predictions).set_index("patient_id").loc[ours.index]
    assert (ours["split"] == "test").sum() >= 3
    for column in ("age_pred", "age_pred_corrected"):
        assert np.array_equal(theirs[column].to_numpy(), ours[column].to_numpy())


@pytest.mark.slow
def test_contributions_and_intercept_sum_to_predicted_age(applied: tuple[RunDir, RunDir]) -> None:
    source, target = applied
    out = AppliedDir(target)
    intercept = io.read_json(source.age_model)["intercept"]
    totals = io.read_parquet(out.contributions).groupby("patient_id")["contribution_years"].sum() + intercept
    predicted = io.read_parquet(out.predictions).set_index("patient_id")["age_pred"]
    np.testing.assert_allclose(totals.loc[predicted.index].to_numpy(), predicted.to_numpy(), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_codes_npz_holds_the_source_concept_model_activations(applied: tuple[RunDir, RunDir]) -> None:
    source, target = applied
    stored = np.load(AppliedDir(target).codes)
    embeddings = load_embeddings(target)
    dense = load_frozen_models(read_source(source.root)).concept_model.encode(np.array(embeddings.z))
    indptr = stored["indptr"]
    assert stored["concept"].dtype == np.int32 and stored["value"].dtype == np.float32
    assert np.array_equal(stored["window_id"], embeddings.index["window_id"].to_numpy())
    rebuilt = np.zeros_like(dense)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    rebuilt[rows, stored["concept"]] = stored["value"]
    assert np.array_equal(rebuilt, dense)


@pytest.mark.slow
def test_applying_into_a_run_with_models_is_refused_and_leaves_it_untouched(applied: tuple[RunDir, RunDir]) -> None:
    source, _ = applied
    before = _digest(source.root)
    result = runner.invoke(app, ["apply", "--from-run", str(source.root), "--run-dir", str(source.root), "-q",
                                 "--config", str(source.config_resolved)])
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: --run-dir {source.root}: holds trained models")
    assert _digest(source.root) == before


@pytest.mark.slow
def test_source_with_an_edited_age_model_is_refused(applied: tuple[RunDir, RunDir], tmp_path: Path) -> None:
    source = RunDir(tmp_path / "A")
    shutil.copytree(applied[0].root, source.root)
    assert load_frozen_models(read_source(source.root)).concept_model.info.name == "stsae-full-K64-s0"
    record = io.read_json(source.age_model)
    io.write_json(source.age_model, {**record, "intercept": record["intercept"] + 1.0})
    with pytest.raises(StsaeError, match=r"age stage is not up to date \(output\(s\) changed"):
        load_frozen_models(read_source(source.root))


@pytest.mark.slow
def test_manifest_and_report_name_the_source_of_every_model(applied: tuple[RunDir, RunDir]) -> None:
    source, target = applied
    fact = io.read_json(target.manifest)["applied_from"]
    assert fact == {"run": str(source.root.resolve()), "main_model": "stsae-full-K64-s0",
                    "age_model_sha256": hashlib.sha256(source.age_model.read_bytes()).hexdigest()}
    html = target.report_html.read_text()
    assert f"comes from run {source.root.resolve()}" in html and fact["age_model_sha256"] in html
    associations = io.read_json(AppliedDir(target).associations)
    assert set(associations["associations"]) == {"htn", "t2d"}
    assert associations["metrics"]["n"] == len(pd.read_parquet(AppliedDir(target).predictions))
