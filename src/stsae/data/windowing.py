"""Records → 10 s windows for every source: band-pass, resample to 125 Hz, cut, z-score, and QC.

Why one module: the synthetic cohort and every real loader (PulseDB, MIMIC) go through exactly the same
steps, so a difference between sources is never a difference in preprocessing.

Order (as PaPaGei's own preprocessing): zero-phase band-pass at the original rate → polyphase
resampling to fs_target (bounded factors for any rate, `stsae.data.resample`) → windows → per-window
z-score. `filter: cheby2` reproduces PaPaGei/pyPPG:
Chebyshev II order 4, 20 dB stopband, 0.5–12 Hz, filtfilt, then a 50 ms moving average applied with
filtfilt when fs ≥ 75 Hz. QC (`signal_quality_mask`) runs on the raw, unfiltered windows at the
original rate, because filtering hides flat lines and clipping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps

from stsae.config import WindowingSection
from stsae.data.records import RawRecord
from stsae.data.resample import SamplingRateError, resample_poly_to
from stsae.errors import StsaeError

QC_REASONS = ("nan", "flatline", "clipping", "implausible_hr", "low_sqi")
_REASON_DTYPE = "<U14"
_FLAT_BLOCK_S = 0.25  # flatness is judged on blocks this long
_CLIP_TOLERANCE = 1e-3  # a sample within this fraction of the range from an extreme counts as pinned
_MAX_RR_RATIO = 2.2  # longest / shortest beat interval (Orphanidou et al. 2015)
_MAX_GAP_S = 3.0  # longest allowed beat interval (Orphanidou et al. 2015)


@dataclass(frozen=True)
class _BeatLimits:
    """The beat-level thresholds of signal_quality_mask, passed down as one value."""

    hr_min_bpm: float
    hr_max_bpm: float
    min_template_sqi: float
    max_poor_beat_fraction: float


@dataclass
class Windows:
    """Windows cut from R equal-length signals, in (row, segment) order.

    windows: float32[N, L] band-passed, resampled, z-scored; raw: float32[N, L_raw] the same spans of
    the unfiltered input at its own rate (NaN kept); row: int64[N] input row; segment_idx: int64[N]
    position within its row; t_start_s: float64[N] seconds from the row's start.
    """

    windows: np.ndarray
    raw: np.ndarray
    row: np.ndarray
    segment_idx: np.ndarray
    t_start_s: np.ndarray


def bandpass(signal: np.ndarray, sampling_rate: float, *, low_hz: float = 0.5, high_hz: float = 12.0,
             method: str = "butterworth", order: int = 4) -> np.ndarray:
    """Zero-phase band-pass along the last axis (float64); signal must be finite.

    method: "butterworth" (sosfiltfilt), "cheby2" (PaPaGei/pyPPG: 20 dB stopband, filtfilt, then a 50 ms
    moving average when sampling_rate ≥ 75 Hz) or "none". Raises SamplingRateError when high_hz is not
    below the Nyquist rate (a property of one record, so a streaming caller skips that record).
    """
    if method == "none":
        return signal
    if not low_hz < high_hz:
        raise StsaeError(f"data.windowing.band_low_hz ({low_hz}) must be below band_high_hz ({high_hz})")
    if not high_hz < sampling_rate / 2:
        raise SamplingRateError(f"data.windowing.band_high_hz={high_hz} Hz must be below fs/2 = "
                                f"{sampling_rate / 2} Hz for a signal sampled at {sampling_rate} Hz")
    band = [low_hz, high_hz]
    if method == "butterworth":
        sos = sps.butter(order, band, btype="bandpass", fs=sampling_rate, output="sos")
        return sps.sosfiltfilt(sos, signal, axis=-1)
    if method != "cheby2":
        raise StsaeError(f"data.windowing.filter: unknown band-pass '{method}' (butterworth, cheby2, none)")
    b, a = sps.cheby2(order, 20, band, btype="bandpass", fs=sampling_rate)
    y = sps.filtfilt(b, a, signal, axis=-1)
    if sampling_rate >= 75:
        win = round(sampling_rate * 50 / 1000)  # Python's round, exactly as pyPPG
        y = sps.filtfilt(np.ones(win) / win, 1, y, axis=-1)
    return y


def zscore(windows: np.ndarray) -> np.ndarray:
    """Per-window z-score: float[N, L] → float32[N, L]; a constant window becomes all zeros."""
    x = np.asarray(windows, dtype=np.float64)
    std = x.std(axis=1, keepdims=True)
    out = np.divide(x - x.mean(axis=1, keepdims=True), std, out=np.zeros_like(x), where=std > 1e-12)
    return out.astype(np.float32)


def fill_gaps(x: np.ndarray) -> np.ndarray:
    """Linearly interpolate NaN runs per row (float64[R, n]) so one gap cannot poison a whole record
    through the filter; an all-NaN row becomes zeros. The affected windows fail QC ("nan")."""
    out = np.array(x, dtype=np.float64)
    for r in np.flatnonzero(~np.isfinite(out).all(axis=1)):
        good = np.isfinite(out[r])
        out[r] = np.interp(np.arange(out.shape[1]), np.flatnonzero(good), out[r, good]) if good.any() else 0.0
    return out


def window_signals(signals: np.ndarray, fs: float, cfg: WindowingSection) -> Windows:
    """Cut R equal-length raw signals (float[R, n] at fs Hz, NaN allowed) into preprocessed windows.

    Windows start every stride_s seconds and must fit wholly inside the signal at both rates.
    """
    signals = np.asarray(signals, dtype=np.float64)
    if signals.ndim != 2:
        raise ValueError(f"signals must be 2-D [R, n], got shape {signals.shape}")
    r_count, n = signals.shape
    length = round(cfg.window_s * cfg.fs_target)
    stride = round(cfg.stride_s * cfg.fs_target)
    raw_length = round(cfg.window_s * fs)
    available = int(np.floor(n * cfg.fs_target / fs + 1e-9))  # samples guaranteed after resampling
    n_windows = max(0, (available - length) // stride + 1)
    starts_s = np.arange(n_windows) * stride / cfg.fs_target
    raw_starts = np.minimum(np.round(starts_s * fs).astype(np.int64), n - raw_length)
    if n_windows == 0:
        empty = np.zeros((0, length), np.float32)
        return Windows(empty, np.zeros((0, raw_length), np.float32), np.zeros(0, np.int64),
                       np.zeros(0, np.int64), np.zeros(0))
    filtered = bandpass(fill_gaps(signals), fs, low_hz=cfg.band_low_hz, high_hz=cfg.band_high_hz,
                        method=cfg.filter, order=cfg.filter_order)
    processed = resample_poly_to(filtered, fs, cfg.fs_target)
    starts = np.arange(n_windows) * stride
    cut = processed[:, starts[:, None] + np.arange(length)[None, :]]  # [R, W, L]
    raw = signals[:, raw_starts[:, None] + np.arange(raw_length)[None, :]]
    return Windows(
        windows=zscore(cut.reshape(r_count * n_windows, length)),
        raw=raw.reshape(r_count * n_windows, raw_length).astype(np.float32),
        row=np.repeat(np.arange(r_count, dtype=np.int64), n_windows),
        segment_idx=np.tile(np.arange(n_windows, dtype=np.int64), r_count),
        t_start_s=np.tile(starts_s, r_count),
    )


def window_record(record: RawRecord, cfg: WindowingSection) -> Windows:
    """Windows of one record (see window_signals); row is always 0."""
    return window_signals(record.signal[None, :], record.fs, cfg)


def signal_quality_mask(windows: np.ndarray, sampling_rate: float, *, hr_min_bpm: float = 30.0,
                        hr_max_bpm: float = 200.0, flatline_min_std: float = 1e-3,
                        flatline_max_fraction: float = 0.1, clipping_max_fraction: float = 0.05,
                        min_template_sqi: float = 0.86, max_poor_beat_fraction: float = 0.2
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Which raw windows are usable, and why not (keywords as config `data.qc`, defaults as there).

    windows: float[N, L] raw (unfiltered) windows at sampling_rate Hz. Returns (qc_pass: bool[N],
    reason: str[N]) with reason "" for passed windows, else the first failing check in QC_REASONS order:
      nan            any non-finite sample
      flatline       more than flatline_max_fraction of the window in flat 0.25 s blocks (block SD ≤
                     flatline_min_std × the window's range)
      clipping       more than clipping_max_fraction of samples pinned at the window's max or min
      implausible_hr heart rate outside [hr_min_bpm, hr_max_bpm], no periodicity, or irregular beats
                     (longest/shortest interval > 2.2 or a gap > 3 s; Orphanidou et al. 2015)
      low_sqi        beats correlate with their median beat below min_template_sqi on average, or
                     more than max_poor_beat_fraction of beats do (template matching, Li & Clifford
                     2012; threshold 0.86 as Orphanidou et al. 2015)
    """
    fs = sampling_rate
    beat = _BeatLimits(hr_min_bpm, hr_max_bpm, min_template_sqi, max_poor_beat_fraction)
    x = np.asarray(windows, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"windows must be 2-D [N, L], got shape {x.shape}")
    reason = np.full(x.shape[0], "", dtype=_REASON_DTYPE)
    finite = np.isfinite(x).all(axis=1)
    reason[~finite] = "nan"
    x = np.where(np.isfinite(x), x, 0.0)
    todo = reason == ""
    reason[todo & (_flat_fraction(x, fs, flatline_min_std) > flatline_max_fraction)] = "flatline"
    todo = reason == ""
    reason[todo & (_pinned_fraction(x) > clipping_max_fraction)] = "clipping"
    todo = np.flatnonzero(reason == "")
    if todo.size:
        reason[todo] = _beat_checks(x[todo], fs, beat)
    return reason == "", reason


def _flat_fraction(x: np.ndarray, fs: float, min_std: float) -> np.ndarray:
    """Fraction of each window in 0.25 s blocks whose SD is ≤ min_std × the window's range."""
    block = max(2, round(_FLAT_BLOCK_S * fs))
    n_blocks = x.shape[1] // block
    blocks = x[:, : n_blocks * block].reshape(x.shape[0], n_blocks, block)
    span = np.ptp(x, axis=1)[:, None]
    flat = blocks.std(axis=2) <= min_std * span
    return flat.sum(axis=1) * block / x.shape[1]


def _pinned_fraction(x: np.ndarray) -> np.ndarray:
    """Fraction of samples within 0.1 % of the range from the window's max or min (saturation)."""
    hi, lo = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
    tol = _CLIP_TOLERANCE * (hi - lo)
    return ((x >= hi - tol) | (x <= lo + tol)).mean(axis=1)


def _dominant_period(y: np.ndarray, fs: float) -> np.ndarray:
    """Beat period (samples, float) per window from the autocorrelation: its highest peak after the
    first zero crossing, between 0.2 s and 3 s (wide enough to see implausible rates). NaN if none."""
    n = y.shape[1]
    spectrum = np.fft.rfft(y, n=2 * n, axis=1)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :n]
    acf /= np.maximum(acf[:, :1], 1e-12)
    lags = np.arange(n)
    past_zero = np.maximum.accumulate(acf < 0, axis=1)
    allowed = past_zero & (lags >= 0.2 * fs) & (lags <= min(3.0 * fs, n - 2))
    scored = np.where(allowed, acf, -np.inf)
    best = scored.argmax(axis=1)
    ok = np.isfinite(scored[np.arange(len(y)), best]) & (scored[np.arange(len(y)), best] > 0)
    return np.where(ok, best, np.nan).astype(float)


def _beat_checks(x: np.ndarray, fs: float, limits: _BeatLimits) -> np.ndarray:
    """implausible_hr / low_sqi / "" for windows that passed the sample-level checks."""
    nyquist_safe = min(8.0, 0.45 * fs)
    sos = sps.butter(2, [0.5, nyquist_safe], btype="bandpass", fs=fs, output="sos")
    y = sps.sosfiltfilt(sos, x - x.mean(axis=1, keepdims=True), axis=1)
    period = _dominant_period(y, fs)
    low, high = np.percentile(y, [2.5, 97.5], axis=1)
    reason = np.full(len(x), "", dtype=_REASON_DTYPE)
    for i in range(len(x)):
        reason[i] = _one_window_beats(y[i], period[i], high[i] - low[i], fs, limits)
    return reason


def _one_window_beats(y: np.ndarray, period: float, spread: float, fs: float, limits: _BeatLimits) -> str:
    """Beat-level checks of one band-passed window; period in samples, spread its robust range."""
    if not np.isfinite(period) or not limits.hr_min_bpm <= 60.0 * fs / period <= limits.hr_max_bpm:
        return "implausible_hr"
    peaks, _ = sps.find_peaks(y, distance=max(1, round(0.6 * period)), prominence=0.3 * spread)
    if peaks.size < 3:
        return "implausible_hr"
    intervals = np.diff(peaks)
    gap_s = max(peaks[0], y.size - 1 - peaks[-1], intervals.max()) / fs
    if intervals.max() / intervals.min() > _MAX_RR_RATIO or gap_s > _MAX_GAP_S:
        return "implausible_hr"
    before, after = round(0.35 * period), round(0.65 * period)
    inner = peaks[(peaks >= before) & (peaks + after <= y.size)]
    if inner.size < 2:
        return "implausible_hr"
    beats = y[inner[:, None] + np.arange(-before, after)[None, :]]
    beats = beats - beats.mean(axis=1, keepdims=True)
    template = np.median(beats, axis=0)  # robust: a few corrupted beats cannot pull it towards them
    denom = np.linalg.norm(beats, axis=1) * np.linalg.norm(template)
    corr = beats @ template / np.maximum(denom, 1e-12)
    poor = (corr < limits.min_template_sqi).mean()
    ok = corr.mean() >= limits.min_template_sqi and poor <= limits.max_poor_beat_fraction
    return "" if ok else "low_sqi"
