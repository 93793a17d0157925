"""The synthetic cohort: reproducible, chunk-independent, and carrying the planted effects it claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from stsae.config import SyntheticSection, WindowingSection
from stsae.data.synthetic import ARTIFACT_TYPES, PLANTED_COLUMNS, iter_cohort, make_patients, window_factors
from stsae.data.windowing import window_signals
from stsae.errors import StsaeError


def _cohort(**overrides: object) -> SyntheticSection:
    fields = {"n_patients": 6, "records_per_patient": 2, "minutes_per_record": 0.5, "chunk_windows": 1000}
    fields.update(overrides)
    return SyntheticSection(**fields)


def _signals(cfg: SyntheticSection, seed: int) -> np.ndarray:
    return np.concatenate([chunk.signals for chunk in iter_cohort(cfg, seed, 10.0)])


def test_same_seed_gives_identical_bytes() -> None:
    assert _signals(_cohort(), 3).tobytes() == _signals(_cohort(), 3).tobytes()


def test_different_seed_gives_different_cohort() -> None:
    a, b = make_patients(_cohort(), 0), make_patients(_cohort(), 1)
    assert not np.allclose(a["age"], b["age"])
    assert _signals(_cohort(), 0).tobytes() != _signals(_cohort(), 1).tobytes()


def test_cohort_does_not_depend_on_chunk_size() -> None:
    one_record_per_chunk = _signals(_cohort(chunk_windows=1), 5)
    all_in_one_chunk = _signals(_cohort(chunk_windows=10_000), 5)
    assert one_record_per_chunk.tobytes() == all_in_one_chunk.tobytes()


def test_chunks_bound_the_records_rendered_at_once() -> None:
    sizes = [chunk.signals.shape[0] for chunk in iter_cohort(_cohort(chunk_windows=6), 0, 10.0)]
    assert max(sizes) == 2  # 3 windows per 30 s record → 2 records per 6-window chunk
    assert sum(sizes) == 12


def test_inverted_age_range_is_a_config_error() -> None:
    with pytest.raises(StsaeError, match=r"data\.synthetic\.age_max"):
        make_patients(_cohort(age_min=60.0, age_max=50.0), 0)


def test_htn_and_t2d_prevalence_rise_with_age() -> None:
    patients = make_patients(_cohort(n_patients=4000), 0)
    young, old = patients["age"] < 40, patients["age"] > 70
    for condition in ("htn", "t2d"):
        assert patients.loc[old, condition].mean() > 2 * patients.loc[young, condition].mean()


def test_vascular_acceleration_recovers_planted_htn_and_t2d_years() -> None:
    cfg = _cohort(n_patients=4000)
    patients = make_patients(cfg, 0)
    design = np.column_stack([np.ones(len(patients)), patients["htn"], patients["t2d"]])
    coef, *_ = np.linalg.lstsq(design, patients["vascular_acceleration"].to_numpy(), rcond=None)
    assert coef[1] == pytest.approx(cfg.htn_acceleration_years, abs=0.5)
    assert coef[2] == pytest.approx(cfg.t2d_acceleration_years, abs=0.5)
    assert np.allclose(patients["vascular_age"], patients["age"] + patients["vascular_acceleration"])


def test_artifact_fraction_matches_config() -> None:
    cfg = _cohort(n_patients=150, artifact_fraction=0.2)
    kinds = []
    for chunk in iter_cohort(cfg, 0, 10.0):
        rows = np.repeat(np.arange(len(chunk.records)), 3)
        starts = np.tile([0.0, 10.0, 20.0], len(chunk.records))
        kinds.append(window_factors(chunk, rows, starts, 10.0)["artifact"].to_numpy())
    kinds = np.concatenate(kinds)
    assert set(kinds) == set(ARTIFACT_TYPES)
    assert (kinds != "none").mean() == pytest.approx(0.2, abs=0.04)


def _average_beat(window: np.ndarray, fs: float) -> np.ndarray | None:
    """Peak-aligned mean beat, 0.3 s before to 0.6 s after the systolic peak."""
    peaks, _ = sps.find_peaks(window, distance=round(0.45 * fs), prominence=0.5 * np.ptp(window))
    before, after = round(0.3 * fs), round(0.6 * fs)
    peaks = peaks[(peaks >= before) & (peaks + after <= window.size)]
    if peaks.size < 3:
        return None
    return window[peaks[:, None] + np.arange(-before, after)[None, :]].mean(axis=0)


def _reflection_measures(beat: np.ndarray, fs: float) -> tuple[float, float]:
    """(ΔT, AIx) as in Millasseau 2002: time from the systolic peak to the reflected wave — the
    diastolic peak or, when there is none, the inflection point (first local maximum of the first
    derivative after the peak) — and that point's height over the peak's, both above the foot."""
    peak = round(0.3 * fs)
    d1 = np.gradient(beat)
    lo, hi = peak + round(0.05 * fs), peak + round(0.5 * fs)
    local_max = np.flatnonzero((d1[lo:hi] > d1[lo - 1:hi - 1]) & (d1[lo:hi] >= d1[lo + 1:hi + 1])) + lo
    point = int(local_max[0]) if local_max.size else hi
    foot = beat[:peak].min()
    return (point - peak) / fs, (beat[point] - foot) / (beat[peak] - foot)


@pytest.mark.slow
def test_measured_aix_and_reflection_timing_track_vascular_age() -> None:
    cfg = _cohort(n_patients=120, records_per_patient=1, artifact_fraction=0.0)
    wcfg = WindowingSection()
    delta_t, aix, vascular_age = [], [], []
    for chunk in iter_cohort(cfg, 0, wcfg.window_s):
        windows = window_signals(chunk.signals, chunk.fs, wcfg)
        truth = window_factors(chunk, windows.row, windows.t_start_s, wcfg.window_s)
        for window, va in zip(windows.windows, truth["vascular_age"], strict=True):
            beat = _average_beat(window.astype(float), wcfg.fs_target)
            if beat is not None:
                dt, ai = _reflection_measures(beat, wcfg.fs_target)
                delta_t.append(dt)
                aix.append(ai)
                vascular_age.append(va)
    assert len(vascular_age) > 0.9 * 120 * 3
    assert np.corrcoef(vascular_age, aix)[0, 1] > 0.7
    assert np.corrcoef(vascular_age, delta_t)[0, 1] < -0.7


def test_planted_morphology_moves_with_vascular_age_as_in_the_literature() -> None:
    cfg = _cohort(n_patients=300, records_per_patient=1, minutes_per_record=1 / 6, artifact_fraction=0.0)
    chunk = next(iter_cohort(cfg, 0, 10.0))
    truth = window_factors(chunk, np.arange(300), np.zeros(300), 10.0)
    r = truth[list(PLANTED_COLUMNS[:-1])].corr()["vascular_age"]
    assert r["reflection_time"] < -0.8  # the reflected wave arrives earlier
    assert r["aix"] > 0.5  # and is larger relative to the systolic peak
    assert r["notch_depth"] < -0.8  # the dicrotic notch flattens
