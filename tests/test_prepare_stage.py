"""The prepare stage end to end: four consistent files, patient-level splits, atomic on failure."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.config import Config, DataSection, load_config
from stsae.data.records import RawRecord
from stsae.pipeline.runner import StageContext
from stsae.rundir import RunDir
from stsae.stages import prepare


def _tiny_config(*overrides: str) -> Config:
    return load_config(None, ["data.synthetic.n_patients=12", "data.synthetic.minutes_per_record=0.5",
                              "data.synthetic.chunk_windows=7", "data.synthetic.artifact_fraction=0.3",
                              *overrides])


def _run(tmp_path: Path, config: Config) -> RunDir:
    run_dir = RunDir(tmp_path / "run")
    prepare.run(StageContext(config, run_dir, fingerprint="test"))
    return run_dir


def test_prepare_writes_four_files_with_consistent_rows(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, _tiny_config())
    windows = np.load(run_dir.windows, mmap_mode="r")
    meta, qc = pd.read_parquet(run_dir.meta), pd.read_parquet(run_dir.qc)
    splits = pd.read_parquet(run_dir.splits)
    assert windows.dtype == np.float32 and windows.shape == (12 * 2 * 3, 1250)
    assert np.isfinite(windows).all()
    assert meta["window_id"].tolist() == list(range(len(windows))) == qc["window_id"].tolist()
    assert sorted(splits["patient_id"]) == sorted(meta["patient_id"].unique())
    assert set(splits["split"]) == {"train", "val", "test"}
    assert (qc["qc_reason"] == "").tolist() == qc["qc_pass"].tolist()


def test_no_patient_is_in_two_splits(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, _tiny_config())
    meta = pd.read_parquet(run_dir.meta)
    assert (meta.groupby("patient_id")["split"].nunique() == 1).all()
    splits = pd.read_parquet(run_dir.splits).set_index("patient_id")["split"]
    assert (meta["split"].to_numpy() == splits.loc[meta["patient_id"]].to_numpy()).all()


def test_meta_carries_contract_columns_and_planted_factors(tmp_path: Path) -> None:
    meta = pd.read_parquet(_run(tmp_path, _tiny_config()).meta)
    contract = ["window_id", "patient_id", "record_id", "segment_idx", "t_start_s", "fs_orig", "source",
                "split", "age", "sex", "htn", "t2d", "vascular_age", "vascular_acceleration", "hr_bpm",
                "resp_rate", "reflection_time", "aix", "notch_depth", "artifact"]
    assert list(meta.columns) == contract
    assert meta["segment_idx"].dtype == np.int64
    assert np.allclose(meta["vascular_acceleration"], meta["vascular_age"] - meta["age"])


def test_qc_rejects_planted_artifacts_in_the_stage_output(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, _tiny_config())
    meta, qc = pd.read_parquet(run_dir.meta), pd.read_parquet(run_dir.qc)
    planted = meta["artifact"] != "none"
    assert planted.any() and not qc.loc[planted, "qc_pass"].all()
    assert qc.loc[~planted, "qc_pass"].mean() >= 0.95


def test_same_seed_writes_identical_windows(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", _tiny_config()).windows.read_bytes()
    assert first == _run(tmp_path / "b", _tiny_config()).windows.read_bytes()
    assert first != _run(tmp_path / "c", _tiny_config("run.seed=1")).windows.read_bytes()


def test_a_failing_prepare_leaves_no_output_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = prepare.signal_quality_mask

    def fail_on_third_batch(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "signal_quality_mask", fail_on_third_batch)
    run_dir = RunDir(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        prepare.run(StageContext(_tiny_config(), run_dir, fingerprint="test"))
    assert list(run_dir.windows_dir.iterdir()) == []


def _fake_records(data: DataSection, issues: object = None) -> Iterator[RawRecord]:
    t = np.arange(round(25 * 250.0)) / 250.0
    pulse = np.sin(2 * np.pi * 1.2 * t) + 0.3 * np.sin(2 * np.pi * 2.4 * t + 1.0)
    for i in range(4):
        signal = pulse.copy()
        if i == 0:
            signal[100:200] = np.nan
        yield RawRecord(patient_id=f"P{i}", record_id=f"P{i}-a", signal=signal, fs=250.0, source="fake",
                        t_start_s=100.0, clinical={"age": 40.0 + 10 * i, "sex": "F", "htn": 1, "t2d": None},
                        extra={"age_capped": False})


def test_real_sources_stream_through_the_same_windowing(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "stsae.data.sources",
                        types.SimpleNamespace(iter_source_records=_fake_records))
    run_dir = _run(tmp_path, load_config(None, ["data.source=pulsedb"]))
    meta, qc = pd.read_parquet(run_dir.meta), pd.read_parquet(run_dir.qc)
    assert np.load(run_dir.windows).shape == (8, 1250)
    assert meta["fs_orig"].eq(250.0).all() and meta["source"].eq("fake").all()
    assert meta["t_start_s"].tolist()[:2] == [100.0, 110.0]
    assert meta["t2d"].isna().all() and meta["htn"].eq(1.0).all() and meta["age_capped"].eq(False).all()
    assert qc["qc_reason"].tolist()[:2] == ["nan", ""]


def test_npy_row_writer_grows_the_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "rows.npy"
    writer = prepare.NpyRowWriter(path, 3)
    parts = [np.full((n, 3), n, np.float32) for n in (2, 0, 5)]
    for part in parts:
        writer.append(part)
    writer.close()
    assert np.array_equal(np.load(path), np.concatenate(parts))
