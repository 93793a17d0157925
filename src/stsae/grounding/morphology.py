"""Classical pulse-contour features of an average pulse, so concepts can be read in clinical terms.

Why these: each is a published marker of arterial stiffening (Millasseau 2002, Takazawa 1998, Elgendi
2012). All are read from one onset-aligned average pulse (onset 0, systolic peak 1, duration period_s):

- crest_time_s: onset → systolic peak S.
- pulse_width_s: width at half the systolic height.
- delta_t_s: S → diastolic peak D (the highest local maximum after S; if the notch has vanished, the
  diastolic inflection: the first local maximum of the first derivative after S).
- stiffness_index: 1 / delta_t_s (1/s). The clinical SI is body height / ΔT; height is unknown here,
  so this is SI per metre of height.
- reflection_index: x(D) / x(S).
- augmentation_index: (x(t_d) − x(t_b)) / x(S), the late-systolic (SDPPG d-wave time) minus the early-
  systolic (b-wave time) height, following Takazawa's use of the SDPPG to place the two components.
- sdppg_b_a, sdppg_d_a, aging_index = (b − c − d − e) / a, from the waves a (max), b (min), c (max),
  d (min), e (max) of the second derivative, taken in that order from the upstroke.

A feature whose fiducial cannot be found is NaN and the window's `reason` says which; never a zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import find_peaks, savgol_filter

FEATURES = (
    "crest_time_s",
    "pulse_width_s",
    "delta_t_s",
    "stiffness_index",
    "reflection_index",
    "augmentation_index",
    "sdppg_b_a",
    "sdppg_d_a",
    "aging_index",
)
EDGE_FRACTION = 0.03
"""Extrema this close to the beat's end belong to the next upstroke, not to this beat."""
PROMINENCE_FRACTION = 0.01
"""SDPPG waves less prominent than this fraction of max |SDPPG| are numerical ripples, not waves."""


def _derivatives(pulses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample first and second derivatives of float[N, L] pulses (cubic Savitzky–Golay, window ≈ 7 %
    of the beat, odd), all rows in one call. Only zero crossings, extrema and ratios are read from them,
    so the time unit does not matter."""
    window = max(5, round(0.07 * pulses.shape[1]) | 1)
    return (
        savgol_filter(pulses, window, 3, deriv=1, axis=1, mode="interp"),
        savgol_filter(pulses, window, 3, deriv=2, axis=1, mode="interp"),
    )


def _half_height_width(pulse: np.ndarray, peak: int, dt: float) -> float | None:
    half = 0.5 * pulse[peak]
    left = np.flatnonzero(pulse[:peak] < half)
    right = np.flatnonzero(pulse[peak:] < half)
    if len(left) == 0 or len(right) == 0:
        return None
    i, j = left[-1], peak + right[0]
    t_left = i + (half - pulse[i]) / (pulse[i + 1] - pulse[i])
    t_right = j - 1 + (pulse[j - 1] - half) / (pulse[j - 1] - pulse[j])
    return float((t_right - t_left) * dt)


def _diastolic_point(pulse: np.ndarray, d1: np.ndarray, peak: int, end: int) -> int | None:
    after = pulse[peak + 1 : end]
    maxima, _ = find_peaks(after)
    if len(maxima):
        return peak + 1 + int(maxima[np.argmax(after[maxima])])
    inflections, _ = find_peaks(d1[peak + 1 : end])
    return peak + 1 + int(inflections[0]) if len(inflections) else None


def _sdppg_waves(d2: np.ndarray, peak: int, end: int) -> tuple[dict[str, int], str]:
    """Indices of the SDPPG waves a..e, and a reason naming the first one missing.

    a is the largest acceleration of the upstroke (before the systolic peak); b..e alternate after it and
    must lie before `end`.
    """
    prominence = PROMINENCE_FRACTION * float(np.abs(d2).max())
    maxima, _ = find_peaks(d2[:end], prominence=prominence)
    minima, _ = find_peaks(-d2[:end], prominence=prominence)
    waves: dict[str, int] = {"a": int(np.argmax(d2[: max(peak, 1)]))}
    if peak < 2 or d2[waves["a"]] <= 0:
        return waves, "SDPPG a wave not found before the systolic peak"
    position = waves["a"]
    for name, candidates in (("b", minima), ("c", maxima), ("d", minima), ("e", maxima)):
        later = candidates[candidates > position]
        if len(later) == 0:
            return waves, f"SDPPG {name} wave not found"
        position = waves[name] = int(later[0])
    return waves, ""


def _features(
    pulse: np.ndarray, d1: np.ndarray, d2: np.ndarray, period_s: float
) -> tuple[dict[str, float], str]:
    values = dict.fromkeys(FEATURES, float("nan"))
    dt = period_s / (len(pulse) - 1)
    end = len(pulse) - max(1, round(EDGE_FRACTION * len(pulse)))
    reasons = []
    peak = int(np.argmax(pulse))
    values["crest_time_s"] = peak * dt
    width = _half_height_width(pulse, peak, dt)
    if width is None:
        reasons.append("no half-height crossing")
    else:
        values["pulse_width_s"] = width
    diastolic = _diastolic_point(pulse, d1, peak, end)
    if diastolic is None:
        reasons.append("no diastolic peak or inflection")
    else:
        values["delta_t_s"] = (diastolic - peak) * dt
        values["stiffness_index"] = 1.0 / values["delta_t_s"]
        values["reflection_index"] = float(pulse[diastolic] / pulse[peak])
    waves, wave_reason = _sdppg_waves(d2, peak, end)
    a = d2[waves["a"]]
    if "b" in waves:
        values["sdppg_b_a"] = float(d2[waves["b"]] / a)
    if "d" in waves:
        values["sdppg_d_a"] = float(d2[waves["d"]] / a)
        values["augmentation_index"] = float((pulse[waves["d"]] - pulse[waves["b"]]) / pulse[peak])
    if "e" in waves:
        values["aging_index"] = float((d2[waves["b"]] - d2[waves["c"]] - d2[waves["d"]] - d2[waves["e"]]) / a)
    if wave_reason:
        reasons.append(wave_reason)
    return values, "; ".join(reasons)


def morphology_table(pulses: np.ndarray, period_s: np.ndarray, pulse_reason: np.ndarray) -> pd.DataFrame:
    """One row per window: FEATURES columns (NaN where a fiducial is missing) + `reason`.

    pulses: float32[N, L] average pulses (onset 0, peak 1); period_s: float64[N] their durations;
    pulse_reason: str[N] why a pulse is missing ("" when present), as from `grounding.beats.average_pulses`.
    """
    if pulses.ndim != 2 or not len(pulses) == len(period_s) == len(pulse_reason):
        raise ValueError(f"pulses {list(pulses.shape)}, period_s and pulse_reason must share rows")
    pulses = np.asarray(pulses, dtype=np.float64)
    valid = np.isfinite(pulses).all(axis=1) & np.isfinite(period_s)
    d1, d2 = np.full_like(pulses, np.nan), np.full_like(pulses, np.nan)
    if valid.any():
        d1[valid], d2[valid] = _derivatives(pulses[valid])
    rows, reasons = [], []
    for i in range(len(pulses)):
        if valid[i]:
            values, reason = _features(pulses[i], d1[i], d2[i], float(period_s[i]))
        else:
            values, reason = dict.fromkeys(FEATURES, float("nan")), pulse_reason[i] or "no average pulse"
        rows.append(values)
        reasons.append(reason)
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    frame["reason"] = reasons
    return frame


def pulse_morphology(pulse: np.ndarray, period_s: float) -> tuple[dict[str, float], str]:
    """Features of one average pulse (float[L], onset 0, peak 1, lasting period_s seconds).

    Returns ({feature: value or NaN}, reason listing the fiducials that were not found).
    """
    row = morphology_table(np.asarray(pulse)[None, :], np.array([period_s]), np.array([""])).iloc[0]
    return {name: float(row[name]) for name in FEATURES}, str(row["reason"])
