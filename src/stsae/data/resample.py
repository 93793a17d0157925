"""Any sampling rate → the encoder's rate: bounded rational resampling and irregular timestamps → uniform runs.

Why bounded: `resample_poly(x, up, down)` designs a filter of about 20·max(up, down) taps. An exact fraction
of a measured rate (117.03 Hz → 125 Hz is 12500/11703; `limit_denominator()` allows up to 10⁶) asks for
filters of 10⁸ taps and the process is killed for memory. `rational_factors` picks the smallest
denominator among 10, 100, 1 000, 10 000 whose ratio is within `RATE_TOLERANCE` of the true one, and
up, down ≤ `MAX_FACTOR`, so the filter stays below ~10⁶ taps (8 MB) whatever the rate (124.945 Hz, MIMIC-IV
pleth: ×9091/9087; 117.03 Hz: ×47/44); the relative rate error it leaves (a
time-scale error: 1e-4 is 1 ms in a 10 s window) is returned so the caller can record it
(`resampling_summary`, a manifest fact of prepare).

Timestamped signals (a table with a time column) are rarely on an exact grid: `uniform_runs` splits them at
gaps longer than `max_gap_s`, measures each run's mean rate from its first and last timestamps, and
linearly interpolates the samples onto that uniform grid (jitter of a fraction of a sample costs less than
the band-pass already removes).
"""

from __future__ import annotations

import functools
import itertools
import logging
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from stsae.errors import InputDataError

log = logging.getLogger(__name__)

RATE_TOLERANCE = 1e-4  # largest accepted relative error of the resampling ratio
_DENOMINATORS = (10, 100, 1000, 10_000)
MAX_FACTOR = 50_000  # largest up or down factor (a filter of ~20 taps per unit)


class SamplingRateError(InputDataError):
    """A signal's sampling rate cannot be processed (too low for the band-pass, or beyond the resampler's
    bounded factors): a property of one record, so a caller streaming many records skips that one."""


@dataclass(frozen=True)
class ResampleFactors:
    """up/down factors for `resample_poly` and the relative error of up/down against fs_target/fs."""

    up: int
    down: int
    rel_error: float


@functools.lru_cache(maxsize=256)
def rational_factors(fs: float, fs_target: float) -> ResampleFactors:
    """The smallest-denominator fraction up/down ≈ fs_target/fs within RATE_TOLERANCE (logged once per rate).

    Raises SamplingRateError for a rate so extreme that no bounded fraction is close enough.
    """
    if not (np.isfinite(fs) and fs > 0 and np.isfinite(fs_target) and fs_target > 0):
        raise SamplingRateError(f"sampling rates must be positive and finite, got fs={fs}, fs_target={fs_target}")
    ratio = fs_target / fs
    for limit in _DENOMINATORS:
        fraction = Fraction(ratio).limit_denominator(limit)
        error = abs(float(fraction) - ratio) / ratio if fraction else float("inf")
        if error <= RATE_TOLERANCE and max(fraction.numerator, fraction.denominator) <= MAX_FACTOR:
            factors = ResampleFactors(fraction.numerator, fraction.denominator, error)
            if error > 0:
                log.debug("resampling %g Hz → %g Hz as ×%d/%d (relative rate error %.2g)",
                         fs, fs_target, factors.up, factors.down, error)
            return factors
    raise SamplingRateError(f"sampling rate {fs:g} Hz cannot be resampled to {fs_target:g} Hz within a relative "
                     f"error of {RATE_TOLERANCE:g}")


def resample_poly_to(x: np.ndarray, fs: float, fs_target: float) -> np.ndarray:
    """Polyphase resampling along the last axis with bounded factors (see `rational_factors`)."""
    factors = rational_factors(float(fs), float(fs_target))
    if factors.up == factors.down:
        return x
    return sps.resample_poly(x, factors.up, factors.down, axis=-1)


@dataclass(frozen=True)
class UniformRun:
    """A gap-free stretch of a timestamped signal on a uniform grid.

    t_start_s: time of the first sample (the caller's time axis, seconds); fs: the run's mean rate (Hz);
    signal: float64[n] samples interpolated onto t_start_s + k / fs.
    """

    t_start_s: float
    fs: float
    signal: np.ndarray


def uniform_runs(t_s: np.ndarray, x: np.ndarray, max_gap_s: float) -> list[UniformRun]:
    """Split a timestamped signal at gaps > max_gap_s and put each run on a uniform grid at its mean rate.

    t_s: float64[n] strictly increasing seconds; x: float[n] samples (NaN allowed). Runs of fewer than 2
    samples are dropped. Raises ValueError when t_s is not strictly increasing (duplicate or unsorted times).
    """
    t_s = np.asarray(t_s, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if t_s.shape != x.shape or t_s.ndim != 1:
        raise ValueError(f"time and signal must be 1-D of one length, got {t_s.shape} and {x.shape}")
    steps = np.diff(t_s)
    if steps.size and not (steps > 0).all():
        bad = int(np.flatnonzero(~(steps > 0))[0]) + 1
        raise ValueError(f"time is not strictly increasing at sample {bad} ({t_s[bad - 1]!r} then {t_s[bad]!r})")
    bounds = np.concatenate([[0], np.flatnonzero(steps > max_gap_s) + 1, [t_s.size]])
    runs = []
    for start, stop in itertools.pairwise(bounds):
        if stop - start < 2:
            continue
        t, y = t_s[start:stop], x[start:stop]
        fs = (t.size - 1) / (t[-1] - t[0])
        grid = t[0] + np.arange(t.size) / fs
        runs.append(UniformRun(float(t[0]), float(fs), np.interp(grid, t, y)))
    return runs


def resampling_summary(rates: np.ndarray, fs_target: float) -> dict[str, float | int]:
    """Manifest fact: how many distinct input rates, and the worst one's factors and relative rate error."""
    worst_fs, worst = max(((float(fs), rational_factors(float(fs), fs_target)) for fs in np.unique(rates)),
                          key=lambda item: item[1].rel_error)
    return {"n_rates": int(np.unique(rates).size), "max_rel_error": worst.rel_error, "worst_fs": worst_fs,
            "up": worst.up, "down": worst.down}
