"""Any sampling rate: bounded resampling factors, timestamps → uniform runs, bounded memory for odd rates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stsae.data.resample import (
    MAX_FACTOR,
    RATE_TOLERANCE,
    SamplingRateError,
    rational_factors,
    resample_poly_to,
    resampling_summary,
    uniform_runs,
)

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize("fs", [117.03, 124.945, 62.4725, 99.9989, 256.0, 1000.0, 30.0, 10_000.0])
def test_factors_stay_bounded_and_within_tolerance(fs: float) -> None:
    factors = rational_factors(fs, 125.0)
    assert max(factors.up, factors.down) <= MAX_FACTOR
    assert abs(factors.up / factors.down - 125.0 / fs) / (125.0 / fs) == pytest.approx(factors.rel_error)
    assert factors.rel_error <= RATE_TOLERANCE


def test_measured_rate_117_03_hz_uses_small_factors_not_exact_fraction() -> None:
    """The exact fraction 12500/11703 is what blew memory up; a 1e-4 approximation needs only 47/44."""
    factors = rational_factors(117.03, 125.0)
    assert (factors.up, factors.down) == (47, 44)


def test_integer_ratios_are_exact() -> None:
    assert rational_factors(500.0, 125.0) == rational_factors(1000.0, 250.0)
    assert (rational_factors(500.0, 125.0).up, rational_factors(500.0, 125.0).down) == (1, 4)
    assert rational_factors(500.0, 125.0).rel_error == 0.0


def test_resampled_sine_matches_the_same_sine_sampled_at_the_target_rate() -> None:
    fs = 117.03
    t = np.arange(round(60 * fs)) / fs
    out = resample_poly_to(np.sin(2 * np.pi * 1.2 * t), fs, 125.0)
    factors = rational_factors(fs, 125.0)
    effective_fs = fs * factors.up / factors.down
    assert out.size == pytest.approx(t.size * factors.up / factors.down, abs=1)
    inner = slice(200, out.size - 200)  # away from the edges the polyphase filter cannot see past
    truth = np.sin(2 * np.pi * 1.2 * np.arange(out.size) / effective_fs)
    assert np.abs(out[inner] - truth[inner]).max() < 0.01


def test_jittered_timestamps_recover_rate_and_waveform() -> None:
    fs, g = 117.03, np.random.default_rng(0)
    ideal = np.arange(round(30 * fs)) / fs
    stamps = ideal + g.uniform(-0.2, 0.2, ideal.size) / fs  # ±20 % of a sample period
    samples = np.sin(2 * np.pi * 1.1 * stamps)
    (run,) = uniform_runs(stamps, samples, max_gap_s=1.0)
    assert run.fs == pytest.approx(fs, rel=1e-3)
    grid = run.t_start_s + np.arange(run.signal.size) / run.fs
    assert np.abs(run.signal - np.sin(2 * np.pi * 1.1 * grid)).max() < 0.01


def test_gap_longer_than_threshold_splits_the_record() -> None:
    t = np.concatenate([np.arange(500) / 100.0, 20.0 + np.arange(300) / 100.0])
    runs = uniform_runs(t, np.zeros(t.size), max_gap_s=1.0)
    assert [(r.t_start_s, r.signal.size) for r in runs] == [(0.0, 500), (20.0, 300)]
    assert all(r.fs == pytest.approx(100.0) for r in runs)


def test_unsorted_time_is_refused_naming_the_sample() -> None:
    with pytest.raises(ValueError, match="not strictly increasing at sample 2"):
        uniform_runs(np.array([0.0, 0.01, 0.01, 0.03]), np.zeros(4), max_gap_s=1.0)


_HOUR_AT_117 = """
import resource, numpy as np
from stsae.config import WindowingSection
from stsae.data.records import RawRecord
from stsae.data.windowing import window_record
fs = 117.0312987  # as measured from timestamps: the exact fraction is 112856125/105661591
t = np.arange(round(3600 * fs)) / fs
x = np.sin(2 * np.pi * 1.2 * t) + 0.1 * np.sin(2 * np.pi * 0.25 * t)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = window_record(RawRecord("p", "r", x, fs, "test"), WindowingSection())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(out.windows.shape[0], (after - before) / 1024)
"""


def test_hour_long_117_hz_record_windows_with_small_peak_memory() -> None:
    """An hour at a measured 117.03 Hz (3.4 MB of float64) needs ~21 MB extra at peak; the exact fraction
    (factors ~10⁸) asked resample_poly for a filter of ~2·10⁹ taps and the process was killed."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _HOUR_AT_117], capture_output=True, text=True, env=env,
                          timeout=120, check=True)
    n_windows, growth_mb = done.stdout.split()
    assert int(n_windows) == 360
    assert float(growth_mb) < 100


def test_summary_names_the_worst_rate_of_a_cohort() -> None:
    summary = resampling_summary(np.array([125.0, 117.03, 100.0, 117.03]), 125.0)
    assert summary == {"n_rates": 3, "max_rel_error": rational_factors(117.03, 125.0).rel_error,
                       "worst_fs": 117.03, "up": 47, "down": 44}


def test_rate_beyond_bounded_factors_is_a_per_record_sampling_rate_error() -> None:
    with pytest.raises(SamplingRateError, match="1e\\+09 Hz cannot be resampled to 125 Hz"):
        rational_factors(1e9, 125.0)
