"""Windowing and QC: the preprocessing every source shares, and the quality mask on planted artifacts."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as sps

from stsae.config import QCSection, SyntheticSection, WindowingSection
from stsae.data.records import RawRecord
from stsae.data.synthetic import iter_cohort, window_factors
from stsae.data.windowing import (
    QC_REASONS,
    bandpass,
    resample_poly_to,
    signal_quality_mask,
    window_record,
    window_signals,
    zscore,
)
from stsae.errors import StsaeError

FS = 125.0


def _pulse_train(seconds: float, fs: float, hr_bpm: float = 72.0, seed: int = 0) -> np.ndarray:
    """A clean PPG-like train (systolic + diastolic Gaussian per beat) with slight noise."""
    t = np.arange(round(seconds * fs)) / fs
    phase = (t * hr_bpm / 60.0) % 1.0 * 60.0 / hr_bpm
    beat = np.exp(-0.5 * ((phase - 0.15) / 0.05) ** 2) + 0.5 * np.exp(-0.5 * ((phase - 0.4) / 0.09) ** 2)
    return 1.0 + beat + 0.01 * np.random.default_rng(seed).standard_normal(t.size)


def test_resampling_to_125_hz_keeps_duration_and_frequency() -> None:
    t = np.arange(5000) / 500.0
    out = resample_poly_to(np.sin(2 * np.pi * 1.2 * t), 500.0, 125.0)
    assert out.shape == (1250,)
    expected = np.sin(2 * np.pi * 1.2 * np.arange(1250) / 125.0)
    assert np.abs(out[50:-50] - expected[50:-50]).max() < 1e-2


def test_cheby2_option_reproduces_the_papagei_pyppg_recipe() -> None:
    x = _pulse_train(30, 250.0) + 0.3 * np.sin(2 * np.pi * 0.1 * np.arange(7500) / 250.0)
    b, a = sps.cheby2(4, 20, [0.5, 12.0], "bandpass", fs=250.0)
    expected = sps.filtfilt(b, a, x)
    win = round(250.0 * 50 / 1000)
    expected = sps.filtfilt(np.ones(win) / win, 1, expected)
    assert np.allclose(bandpass(x, 250.0, method="cheby2"), expected)


def test_butterworth_band_pass_removes_baseline_wander() -> None:
    t = np.arange(30 * 125) / 125.0
    wander = 2.0 * np.sin(2 * np.pi * 0.05 * t)
    out = bandpass(_pulse_train(30, FS) + wander, FS)
    clean = bandpass(_pulse_train(30, FS), FS)
    assert np.abs(out - clean)[500:-500].max() < 0.1


def test_band_edge_at_or_above_nyquist_is_a_config_error() -> None:
    with pytest.raises(StsaeError, match=r"data\.windowing\.band_high_hz"):
        bandpass(np.zeros(2000), 20.0, high_hz=12.0)


@given(seconds=st.floats(9.0, 95.0), stride_s=st.sampled_from([2.5, 5.0, 10.0]),
       fs=st.sampled_from([62.5, 100.0, 125.0, 250.0]))
@settings(max_examples=25, deadline=None)
def test_windows_are_1250_samples_and_fit_inside_the_record(seconds: float, stride_s: float,
                                                            fs: float) -> None:
    n = round(seconds * fs)
    out = window_signals(np.random.default_rng(0).standard_normal((2, n)), fs,
                         WindowingSection(stride_s=stride_s, band_high_hz=min(12.0, fs / 2 - 1)))
    stride = round(stride_s * 125)  # the stride is a whole number of 125 Hz samples (2.5 s -> 312)
    per_row = max(0, int(np.floor((np.floor(n * 125.0 / fs + 1e-9) - 1250) / stride)) + 1)
    assert out.windows.shape == (2 * per_row, 1250)
    assert out.raw.shape == (2 * per_row, round(10.0 * fs))
    assert np.all(out.t_start_s + 10.0 <= n / fs + 1e-9)
    assert np.array_equal(out.segment_idx, np.tile(np.arange(per_row), 2))


def test_windows_are_float32_and_z_scored() -> None:
    record = RawRecord("p", "r", _pulse_train(60, 250.0) * 300.0, 250.0, "test")
    out = window_record(record, WindowingSection())
    assert out.windows.dtype == np.float32
    assert np.allclose(out.windows.mean(axis=1), 0.0, atol=1e-5)
    assert np.allclose(out.windows.std(axis=1), 1.0, atol=1e-4)


def test_constant_window_z_scores_to_zeros_not_nan() -> None:
    assert np.array_equal(zscore(np.ones((2, 10))), np.zeros((2, 10), np.float32))


def test_a_nan_gap_stays_in_its_own_window() -> None:
    x = _pulse_train(60, FS)
    x[2600:2800] = np.nan  # inside window 2 (20–30 s)
    out = window_record(RawRecord("p", "r", x, FS, "test"), WindowingSection())
    assert np.isfinite(out.windows).all()
    ok, reason = signal_quality_mask(out.raw, FS)
    assert list(reason) == ["", "", "nan", "", "", ""]
    assert ok.tolist() == [True, True, False, True, True, True]


def test_each_qc_reason_names_its_defect() -> None:
    clean = _pulse_train(10, FS)
    flat = clean.copy()
    flat[200:900] = flat[200]
    clipped = np.minimum(clean, np.quantile(clean, 0.8))
    fast = _pulse_train(10, FS, hr_bpm=250.0)
    noise = np.random.default_rng(1).standard_normal(1250)
    with_nan = clean.copy()
    with_nan[5] = np.nan
    ok, reason = signal_quality_mask(np.stack([clean, with_nan, flat, clipped, fast, noise]), FS)
    assert reason[:5].tolist() == ["", "nan", "flatline", "clipping", "implausible_hr"]
    assert reason[5] in ("implausible_hr", "low_sqi")
    assert ok.tolist() == [True, False, False, False, False, False]
    assert set(reason) - {""} <= set(QC_REASONS)


def test_implausible_hr_uses_the_configured_bounds() -> None:
    window = _pulse_train(10, FS, hr_bpm=72.0)[None, :]
    assert signal_quality_mask(window, FS, hr_min_bpm=80.0)[1][0] == "implausible_hr"
    assert signal_quality_mask(window, FS, hr_min_bpm=60.0)[1][0] == ""


def test_qc_rejects_planted_artifacts_and_passes_clean_windows() -> None:
    cfg = SyntheticSection(n_patients=100, records_per_patient=1, minutes_per_record=2.0,
                           artifact_fraction=0.3, chunk_windows=10_000)
    chunk = next(iter_cohort(cfg, 0, 10.0))
    out = window_signals(chunk.signals, chunk.fs, WindowingSection())
    planted = window_factors(chunk, out.row, out.t_start_s, 10.0)["artifact"].to_numpy() != "none"
    ok, _ = signal_quality_mask(out.raw, chunk.fs)
    sensitivity = (~ok[planted]).mean()
    specificity = ok[~planted].mean()
    assert planted.sum() > 250
    assert sensitivity >= 0.95
    assert specificity >= 0.95


def test_signal_quality_mask_keywords_are_the_qc_config_keys_with_its_defaults() -> None:
    """The stage passes data.qc as keywords; a renamed or re-defaulted key would silently drift."""
    keywords = {name: p.default for name, p in inspect.signature(signal_quality_mask).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keywords == QCSection().model_dump()


def test_bandpass_keywords_match_the_windowing_defaults() -> None:
    defaults = {name: p.default for name, p in inspect.signature(bandpass).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    cfg = WindowingSection()
    assert defaults == {"low_hz": cfg.band_low_hz, "high_hz": cfg.band_high_hz, "method": cfg.filter,
                        "order": cfg.filter_order}
