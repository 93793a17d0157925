"""Beat detection and onset-aligned averaging on windows built from a known pulse shape."""

from __future__ import annotations

import numpy as np

from stsae.grounding.beats import average_pulse, average_pulses, beat_onsets

FS = 125.0
BEAT_SAMPLES = 100


SYSTOLIC_MU, SYSTOLIC_SIGMA = 0.22, 0.06
FOOT = SYSTOLIC_MU - 2 * SYSTOLIC_SIGMA
"""Where the tangent at a Gaussian's steepest point (mu - sigma) meets its baseline: mu - 2 sigma."""


def template(n: int, start: float = 0.0) -> np.ndarray:
    """A two-wave pulse (systolic + diastolic), one period sampled at n points from phase `start`."""
    t = (np.linspace(0, 1, n) + start) % 1.0
    return np.exp(-0.5 * ((t - SYSTOLIC_MU) / SYSTOLIC_SIGMA) ** 2) + 0.4 * np.exp(
        -0.5 * ((t - 0.55) / 0.08) ** 2
    )


def pulse_train(period_s: float, n_samples: int = 1250, noise: float = 0.02, seed: int = 0) -> np.ndarray:
    """Window of back-to-back template beats, z-scored like windows.npy, with white noise."""
    beat = template(round(period_s * FS))
    signal = np.tile(beat, n_samples // len(beat) + 1)[:n_samples]
    signal = signal + noise * np.random.default_rng(seed).standard_normal(n_samples)
    return ((signal - signal.mean()) / signal.std()).astype(np.float32)


def test_onsets_are_spaced_one_period_apart() -> None:
    onsets = beat_onsets(pulse_train(0.8).astype(np.float64), FS)
    assert len(onsets) >= 9
    assert np.allclose(np.diff(onsets), 0.8 * FS, atol=2)


def test_average_pulse_recovers_the_beat_shape_and_period() -> None:
    pulse, period, n_beats, reason = average_pulse(pulse_train(0.9), FS, BEAT_SAMPLES)
    expected = template(BEAT_SAMPLES, start=FOOT)
    assert reason == ""
    assert n_beats >= 8
    assert abs(period - 0.9) < 0.02
    assert pulse.shape == (BEAT_SAMPLES,) and pulse.dtype == np.float32
    assert np.corrcoef(pulse, expected)[0, 1] > 0.99
    assert abs(int(np.argmax(pulse)) - int(np.argmax(expected))) <= 1


def test_flat_window_gives_nan_pulse_with_reason() -> None:
    result = average_pulse(np.zeros(1250, dtype=np.float32), FS, BEAT_SAMPLES)
    assert np.isnan(result.pulse).all() and np.isnan(result.period_s) and result.n_beats == 0
    assert result.reason == "flat or non-finite window"


def test_average_pulses_keeps_one_row_per_window_in_order() -> None:
    windows = np.stack([pulse_train(0.7), np.zeros(1250, dtype=np.float32), pulse_train(1.0)])
    result = average_pulses(windows, FS, BEAT_SAMPLES)
    assert result.pulses.shape == (3, BEAT_SAMPLES)
    assert list(result.reason != "") == [False, True, False]
    assert np.allclose(result.period_s[[0, 2]], [0.7, 1.0], atol=0.02)
