"""data.source: table — long-form CSV (ms timer, mixed-precision date-times, fs column), Parquet array column,
streaming in chunks, one-line errors naming the config key, and the clinical_path join."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.config import DataSection, WindowingSection, load_config
from stsae.data.issues import DataIssues
from stsae.data.sources import iter_source_records
from stsae.data.table import TableOptions, iter_table_records
from stsae.data.windowing import window_record
from stsae.errors import InputDataError, StsaeError
from stsae.pipeline.runner import StageContext
from stsae.rundir import RunDir
from stsae.stages import prepare

REPO = Path(__file__).resolve().parents[1]


def _pulse(t: np.ndarray, hr_hz: float = 1.2) -> np.ndarray:
    phase = (t * hr_hz) % 1.0
    return np.exp(-((phase - 0.2) ** 2) / 0.005) + 0.4 * np.exp(-((phase - 0.5) ** 2) / 0.01)


def _long_frame(patients: dict[str, float], seconds: float, fs: float, seed: int = 0) -> pd.DataFrame:
    """Long-form rows per patient at a true rate fs (Hz) with a jittered timer (±20 % of a sample)."""
    g, parts = np.random.default_rng(seed), []
    for patient, hr in patients.items():
        t = np.arange(round(seconds * fs)) / fs + g.uniform(-0.2, 0.2, round(seconds * fs)) / fs
        parts.append(pd.DataFrame({"patient_id": patient, "t": t, "ppg": _pulse(t, hr)}))
    return pd.concat(parts, ignore_index=True)


def _ms_csv(path: Path, fs: float = 117.03, seconds: float = 25.0) -> Path:
    frame = _long_frame({"a": 1.0, "b": 1.5}, seconds, fs)
    frame["time_ms"] = np.round(frame.pop("t") * 1000, 3)
    frame.to_csv(path, index=False)
    return path


def test_ms_timer_csv_yields_records_at_the_measured_rate(tmp_path: Path) -> None:
    path = _ms_csv(tmp_path / "ppg.csv")
    records = list(iter_table_records(path, TableOptions(time_column="time_ms", time_unit="ms")))
    assert [(r.patient_id, r.record_id, r.source) for r in records] == [("a", "a", "table"), ("b", "b", "table")]
    assert all(r.fs == pytest.approx(117.03, rel=1e-3) for r in records)
    assert [window_record(r, WindowingSection()).windows.shape[0] for r in records] == [2, 2]


def test_mixed_precision_datetimes_are_parsed(tmp_path: Path) -> None:
    """Rows that fall on a whole second are written without fractional seconds, as many exports do."""
    frame = _long_frame({"a": 1.1}, 12.0, 100.0)
    stamps = pd.Timestamp("2024-03-01 08:00:00") + pd.to_timedelta(np.round(frame.pop("t"), 2), unit="s")
    frame["when"] = [s.strftime("%Y-%m-%d %H:%M:%S") if s.microsecond == 0 else s.isoformat(sep=" ")
                     for s in stamps]
    assert frame["when"].str.len().nunique() > 1  # the file really mixes precisions
    frame.to_csv(tmp_path / "ppg.csv", index=False)
    (record,) = iter_table_records(tmp_path / "ppg.csv", TableOptions(time_column="when", time_unit="datetime"))
    assert record.fs == pytest.approx(100.0, rel=1e-3)
    assert record.signal.size == len(frame)


def test_missing_time_column_names_the_config_key_and_column(tmp_path: Path) -> None:
    path = _ms_csv(tmp_path / "ppg.csv")
    with pytest.raises(InputDataError, match=r"^data\.table_time_column: .*ppg\.csv has no column 'time'"):
        list(iter_table_records(path, TableOptions()))


def test_datetimes_read_as_seconds_name_the_unit_key(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["a"] * 3, "time": ["2024-01-01 00:00:00", "2024-01-01 00:00:00.01",
                                                   "2024-01-01 00:00:00.02"], "ppg": [1.0, 2.0, 3.0]}
                 ).to_csv(tmp_path / "ppg.csv", index=False)
    with pytest.raises(InputDataError, match=r"data\.table_time_unit=s .*try datetime"):
        list(iter_table_records(tmp_path / "ppg.csv", TableOptions()))


def test_fs_column_gives_the_rate_without_timestamps(tmp_path: Path) -> None:
    t = np.arange(3000) / 125.0
    pd.DataFrame({"patient_id": "a", "record_id": ["r1"] * 1500 + ["r2"] * 1500, "fs": 125.0,
                  "ppg": _pulse(t)}).to_csv(tmp_path / "ppg.csv", index=False)
    records = list(iter_table_records(tmp_path / "ppg.csv", TableOptions()))
    assert [(r.record_id, r.fs, r.signal.size) for r in records] == [("r1", 125.0, 1500), ("r2", 125.0, 1500)]


def test_parquet_array_column_one_row_per_record(tmp_path: Path) -> None:
    signals = [_pulse(np.arange(n) / fs) for n, fs in ((2000, 100.0), (3000, 124.945))]
    pd.DataFrame({"patient_id": ["a", "a"], "fs": [100.0, 124.945], "ppg": signals}).to_parquet(
        tmp_path / "ppg.parquet")
    records = list(iter_table_records(tmp_path / "ppg.parquet"))
    assert [(r.record_id, r.fs, r.signal.size) for r in records] == [("a#0", 100.0, 2000), ("a#1", 124.945, 3000)]
    assert np.allclose(records[1].signal, signals[1])


def test_csv_array_column_is_read_too(tmp_path: Path) -> None:
    pd.DataFrame({"patient_id": ["a"], "record_id": ["x"], "fs": [50.0],
                  "ppg": ["[" + ", ".join(str(v) for v in range(600)) + "]"]}).to_csv(tmp_path / "p.csv", index=False)
    (record,) = iter_table_records(tmp_path / "p.csv")
    assert record.record_id == "x" and np.array_equal(record.signal, np.arange(600.0))


def test_chunk_boundaries_do_not_change_the_records(tmp_path: Path) -> None:
    path = _ms_csv(tmp_path / "ppg.csv", seconds=5.0)
    whole = list(iter_table_records(path, TableOptions(time_column="time_ms", time_unit="ms")))
    chunked = list(iter_table_records(path, TableOptions(time_column="time_ms", time_unit="ms", chunk_rows=7)))
    assert [r.record_id for r in chunked] == [r.record_id for r in whole]
    assert all(np.array_equal(a.signal, b.signal) and a.fs == b.fs for a, b in zip(whole, chunked, strict=True))


def test_rows_of_a_record_that_reappear_later_are_refused(tmp_path: Path) -> None:
    frame = _long_frame({"a": 1.0, "b": 1.2}, 2.0, 50.0)
    pd.concat([frame, frame.iloc[:3]]).to_csv(tmp_path / "ppg.csv", index=False)
    with pytest.raises(InputDataError, match=r"rows of record a are not contiguous; sort the file"):
        list(iter_table_records(tmp_path / "ppg.csv", TableOptions(time_column="t")))


def test_time_gap_splits_a_record_and_unsorted_time_skips_it(tmp_path: Path) -> None:
    frame = _long_frame({"a": 1.0}, 4.0, 50.0)
    frame.loc[100:, "t"] += 30.0
    bad = _long_frame({"b": 1.0}, 2.0, 50.0).iloc[::-1]
    pd.concat([frame, bad]).to_csv(tmp_path / "ppg.csv", index=False)
    issues = DataIssues()
    records = list(iter_table_records(tmp_path / "ppg.csv", TableOptions(time_column="t"), issues))
    assert [(r.record_id, r.signal.size) for r in records] == [("a#run0", 100), ("a#run1", 100)]
    assert records[1].t_start_s == pytest.approx(32.0, abs=0.02)
    assert issues.skipped == {"bad_time_vector": 1}


def _streaming_peak(path: Path) -> tuple[int, int]:
    """(records read, peak traced bytes) streaming `path` in 2 000-row chunks."""
    tracemalloc.start()
    count = sum(1 for _ in iter_table_records(path, TableOptions(time_column="t", chunk_rows=2000)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return count, peak


def test_long_csv_memory_does_not_grow_with_the_number_of_records(tmp_path: Path) -> None:
    """10 and 40 records of 5 000 rows: the file grows 4×, the streaming peak (one chunk + one record) not."""
    for n in (10, 40):
        _long_frame({f"p{i}": 1.0 for i in range(n)}, 100.0, 50.0).to_csv(tmp_path / f"{n}.csv", index=False)
    (small_count, small_peak), (large_count, large_peak) = (_streaming_peak(tmp_path / f"{n}.csv") for n in (10, 40))
    assert (small_count, large_count) == (10, 40)
    assert large_peak < 1.3 * small_peak


def _clinical(path: Path) -> Path:
    pd.DataFrame({"patient_id": ["a", "b", "c"], "age": [51.0, 250.0, 40.0], "sex": ["female", "M", "F"],
                  "htn": [1, 0, "maybe"], "t2d": [0, 1, 0], "ckd": [1, 0, 1], "site": ["x", "y", "z"],
                  "split": [1, 1, 0]}
                 ).to_csv(path, index=False)
    return path


def test_clinical_table_joins_by_patient_with_range_checks_and_phenotypes(tmp_path: Path) -> None:
    data = DataSection(source="table", table_path=_ms_csv(tmp_path / "ppg.csv"), table_time_column="time_ms",
                       table_time_unit="ms", clinical_path=_clinical(tmp_path / "clinical.csv"))
    issues = DataIssues()
    a, b = iter_source_records(data, issues)
    assert a.clinical == {"age": 51.0, "sex": "F", "htn": 1, "t2d": 0} and a.extra == {"ckd": 1.0}
    assert np.isnan(b.clinical["age"]) and b.clinical["sex"] == "M" and b.extra == {"ckd": 0.0}
    assert issues.set_unknown == {"age_out_of_range": 1, "bad_binary_value": 1}
    assert "site" not in a.extra and "split" not in a.extra  # not 0/1; would overwrite meta's split


def test_clinical_table_without_patient_id_names_the_key(tmp_path: Path) -> None:
    pd.DataFrame({"id": ["a"], "age": [50]}).to_csv(tmp_path / "c.csv", index=False)
    data = DataSection(source="table", table_path=_ms_csv(tmp_path / "ppg.csv"), clinical_path=tmp_path / "c.csv")
    with pytest.raises(InputDataError, match=r"^data\.clinical_path: .*c\.csv has no 'patient_id' column"):
        list(iter_source_records(data))


def test_unset_table_path_names_the_key() -> None:
    with pytest.raises(StsaeError, match=r"^data\.table_path: not set"):
        list(iter_source_records(DataSection(source="table")))


def test_prepare_runs_on_the_shipped_sample_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the shipped config's paths are relative to the repository root
    run_dir = RunDir(tmp_path / "run")
    prepare.run(StageContext(load_config(REPO / "configs" / "own_csv.yaml"), run_dir, fingerprint="test"))
    meta = pd.read_parquet(run_dir.meta)
    clinical = pd.read_csv(REPO / "examples" / "my_clinical.csv")
    assert meta["patient_id"].nunique() == len(clinical) == 16
    assert len(meta) == 16 * 4 and (meta["source"] == "table").all()
    assert meta["fs_orig"].between(99.9, 100.1).all()
    joined = meta.groupby("patient_id")[["age", "smoker"]].first()
    expected = clinical.set_index("patient_id").loc[joined.index]
    assert np.allclose(joined["age"], expected["age"]) and np.allclose(joined["smoker"], expected["smoker"])
    assert pd.read_parquet(run_dir.qc)["qc_pass"].mean() > 0.9


@pytest.mark.slow
def test_stsae_run_on_the_shipped_sample_gets_to_the_report(tmp_path: Path) -> None:
    """The documented copy-paste command of DATA_GUIDE.md, "Your own PPG" (~1.5 min on 2 cores)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "stsae", "run", "--config", "configs/own_csv.yaml", "--run-dir",
                           str(tmp_path / "own")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "own" / "report.html").is_file()
    assert "RANDOM" in (tmp_path / "own" / "manifest.json").read_text()
