"""Beats of a PPG window, aligned onset to onset and averaged into one pulse per window.

Why: morphology (reflection, notch, SDPPG waves) is read from a single clean pulse, and averaging a
window's beats after aligning them at their onsets cancels noise without smearing the waves. Systolic
peaks come from NeuroKit2's Elgendi detector (maintained, validated on PPG; ~2 ms per 10 s window here,
so thousands of windows take seconds); each beat's onset is its foot by intersecting tangents.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import neurokit2 as nk
import numpy as np

from stsae.utils.progress import progress

log = logging.getLogger(__name__)

MIN_BEATS = 3
"""Fewer clean beats than this and a window's average pulse is not trusted (NaN with a reason)."""
PERIOD_TOLERANCE = 0.3
"""Beats whose onset-to-onset duration differs from the window's median by more than this fraction are
missed or extra detections (or ectopic beats) and are left out of the average."""


@dataclass(frozen=True)
class AveragePulses:
    """pulses: float32[N, L] onset-aligned mean beat per window (onset 0, systolic peak 1; NaN rows where
    no pulse was found); period_s: float64[N] median beat duration; n_beats: int64[N] beats averaged;
    reason: str[N] why a row is NaN ("" when fine)."""

    pulses: np.ndarray
    period_s: np.ndarray
    n_beats: np.ndarray
    reason: np.ndarray


def beat_onsets(window: np.ndarray, fs: float) -> np.ndarray:
    """int64[B+1] beat onsets (feet) between consecutive systolic peaks of a 1-D window sampled at fs Hz.

    Intersecting tangents (Chiu 1991): the tangent at the steepest upstroke meets the horizontal through the
    preceding trough. Unlike the bare trough it is stable when diastole ends in a long flat, noisy tail.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peaks = np.asarray(
            nk.ppg_findpeaks(window, sampling_rate=fs, method="elgendi")["PPG_Peaks"], dtype=np.int64
        )
    slope = np.gradient(window)
    onsets = []
    for start, stop in itertools.pairwise(peaks):
        steepest = start + int(np.argmax(slope[start:stop]))
        trough = float(window[start : steepest + 1].min())
        rise = (window[steepest] - trough) / slope[steepest] if slope[steepest] > 0 else 0.0
        onsets.append(int(np.clip(round(steepest - rise), start, steepest)))
    return np.asarray(onsets, dtype=np.int64)


def _normalised_beat(segment: np.ndarray, beat_samples: int) -> np.ndarray | None:
    """Remove the onset-to-onset baseline line, resample to beat_samples, scale the peak to 1."""
    ramp = np.linspace(segment[0], segment[-1], len(segment))
    flat = segment - ramp
    beat = np.interp(np.linspace(0, len(segment) - 1, beat_samples), np.arange(len(segment)), flat)
    peak = beat.max()
    return beat / peak if peak > 0 else None


class AveragePulse(NamedTuple):
    """One window's pulse: float32[L] onset-aligned mean beat (NaNs when none), median beat duration in s
    (NaN when none), beats averaged, and why there is no pulse ("" when there is one)."""

    pulse: np.ndarray
    period_s: float
    n_beats: int
    reason: str


def average_pulse(window: np.ndarray, fs: float, beat_samples: int) -> AveragePulse:
    """The average onset-aligned beat of one window sampled at fs Hz (window: float[T])."""
    nan_pulse = np.full(beat_samples, np.nan, dtype=np.float32)
    if not np.all(np.isfinite(window)) or np.std(window) == 0:
        return AveragePulse(nan_pulse, float("nan"), 0, "flat or non-finite window")
    onsets = beat_onsets(np.asarray(window, dtype=np.float64), fs)
    if len(onsets) < MIN_BEATS + 1:
        return AveragePulse(nan_pulse, float("nan"), 0, f"fewer than {MIN_BEATS} beats detected")
    durations = np.diff(onsets)
    median = float(np.median(durations))
    keep = np.abs(durations - median) <= PERIOD_TOLERANCE * median
    beats = [
        beat
        for start, stop in zip(onsets[:-1][keep], onsets[1:][keep], strict=True)
        if (beat := _normalised_beat(window[start : stop + 1].astype(np.float64), beat_samples)) is not None
    ]
    if len(beats) < MIN_BEATS:
        return AveragePulse(nan_pulse, float("nan"), len(beats), f"fewer than {MIN_BEATS} regular beats")
    pulse = np.mean(beats, axis=0)
    return AveragePulse((pulse / pulse.max()).astype(np.float32), float(np.median(durations[keep])) / fs,
                        len(beats), "")


def average_pulses(windows: np.ndarray, fs: float, beat_samples: int) -> AveragePulses:
    """Average pulse of every window. windows: float32[N, T] at fs Hz (memmap rows are read one by one)."""
    if windows.ndim != 2:
        raise ValueError(f"windows must be float[N, T], got {list(windows.shape)}")
    n = windows.shape[0]
    pulses = np.empty((n, beat_samples), dtype=np.float32)
    period = np.empty(n)
    n_beats = np.empty(n, dtype=np.int64)
    reason = np.empty(n, dtype=object)
    with progress(n, "average pulses", "window") as bar:
        for i in range(n):
            one = average_pulse(np.asarray(windows[i]), fs, beat_samples)
            pulses[i], period[i], n_beats[i], reason[i] = one.pulse, one.period_s, one.n_beats, one.reason
            bar.update()
    n_failed = int((reason != "").sum())
    if n_failed:
        log.info("no average pulse for %d of %d windows", n_failed, n)
    return AveragePulses(pulses=pulses, period_s=period, n_beats=n_beats, reason=reason.astype(str))
