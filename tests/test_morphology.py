"""Morphology features on Gaussian-sum beats whose wave positions and heights are known analytically."""

from __future__ import annotations

import numpy as np
import pytest

from stsae.grounding.morphology import FEATURES, morphology_table, pulse_morphology

PERIOD_S = 0.9
FINE = 200_001


def gaussian_sum(t: np.ndarray, waves: list[tuple[float, float, float]], deriv: int = 0) -> np.ndarray:
    """Sum of amp·exp(-u²/2), u = (t - mu)/sigma, or its first/second derivative in t (analytic)."""
    total = np.zeros_like(t)
    for amp, mu, sigma in waves:
        u = (t - mu) / sigma
        g = amp * np.exp(-0.5 * u**2)
        total += (g, -u / sigma * g, (u**2 - 1) / sigma**2 * g)[deriv]
    return total


def sampled_beat(waves: list[tuple[float, float, float]], n: int = 100) -> np.ndarray:
    x = gaussian_sum(np.linspace(0, 1, n), waves)
    return x / x.max()


def local_extrema(y: np.ndarray, kind: str) -> np.ndarray:
    d = np.diff(y)
    sign_change = (d[:-1] > 0) & (d[1:] <= 0) if kind == "max" else (d[:-1] < 0) & (d[1:] >= 0)
    return np.flatnonzero(sign_change) + 1


def truth(waves: list[tuple[float, float, float]]) -> dict[str, float]:
    """Reference values from the analytic curve and derivatives on a fine grid (independent of the code)."""
    t = np.linspace(0, 1, FINE)
    x, d2 = gaussian_sum(t, waves), gaussian_sum(t, waves, deriv=2)
    peak = int(np.argmax(x))
    maxima = local_extrema(x, "max")
    dia = maxima[maxima > peak][0]
    above = np.flatnonzero(x >= 0.5 * x[peak])
    a = int(np.argmax(d2[:peak]))
    b = local_extrema(d2, "min")[local_extrema(d2, "min") > a][0]
    c = local_extrema(d2, "max")[local_extrema(d2, "max") > b][0]
    d = local_extrema(d2, "min")[local_extrema(d2, "min") > c][0]
    e = local_extrema(d2, "max")[local_extrema(d2, "max") > d][0]
    return {
        "crest_time_s": t[peak] * PERIOD_S,
        "pulse_width_s": (t[above[-1]] - t[above[0]]) * PERIOD_S,
        "delta_t_s": (t[dia] - t[peak]) * PERIOD_S,
        "reflection_index": x[dia] / x[peak],
        "sdppg_b_a": d2[b] / d2[a],
        "sdppg_d_a": d2[d] / d2[a],
        "aging_index": (d2[b] - d2[c] - d2[d] - d2[e]) / d2[a],
    }


TWO_PEAK_BEAT = [(1.0, 0.2, 0.05), (0.45, 0.55, 0.07)]


def test_timing_features_match_known_wave_positions() -> None:
    values, reason = pulse_morphology(sampled_beat(TWO_PEAK_BEAT), PERIOD_S)
    expected = truth(TWO_PEAK_BEAT)
    assert reason == ""
    for name in ("crest_time_s", "pulse_width_s", "delta_t_s"):
        assert values[name] == pytest.approx(expected[name], abs=0.012), name
    assert values["stiffness_index"] == pytest.approx(1 / expected["delta_t_s"], rel=0.05)


def test_reflection_index_matches_known_height_ratio() -> None:
    values, _ = pulse_morphology(sampled_beat(TWO_PEAK_BEAT), PERIOD_S)
    assert values["reflection_index"] == pytest.approx(truth(TWO_PEAK_BEAT)["reflection_index"], abs=0.01)


def test_sdppg_ratios_match_analytic_second_derivative() -> None:
    values, _ = pulse_morphology(sampled_beat(TWO_PEAK_BEAT), PERIOD_S)
    expected = truth(TWO_PEAK_BEAT)
    for name in ("sdppg_b_a", "sdppg_d_a", "aging_index"):
        assert values[name] == pytest.approx(expected[name], abs=0.05), name


def stiffened_beat(stiffness: float) -> np.ndarray:
    """Vascular-age-like stiffening: the reflected wave arrives earlier and larger, the notch flattens."""
    return sampled_beat(
        [
            (1.0, 0.18, 0.05),
            (0.3 + 0.3 * stiffness, 0.42 - 0.08 * stiffness, 0.06),
            (0.25 - 0.2 * stiffness, 0.62, 0.06),
        ]
    )


def test_b_over_a_rises_and_d_over_a_falls_with_stiffening() -> None:
    young, middle, old = (pulse_morphology(stiffened_beat(s), PERIOD_S)[0] for s in (0.0, 0.5, 1.0))
    assert young["sdppg_b_a"] < middle["sdppg_b_a"] < old["sdppg_b_a"]
    assert young["sdppg_d_a"] > middle["sdppg_d_a"] > old["sdppg_d_a"]


def test_single_wave_beat_has_nan_sdppg_features_with_a_reason() -> None:
    values, reason = pulse_morphology(sampled_beat([(1.0, 0.3, 0.08)]), PERIOD_S)
    assert np.isnan(values["sdppg_d_a"]) and np.isnan(values["aging_index"])
    assert "SDPPG" in reason


def test_missing_pulse_gives_all_nan_and_its_reason() -> None:
    table = morphology_table(
        np.vstack([sampled_beat(TWO_PEAK_BEAT), np.full(100, np.nan)]).astype(np.float32),
        np.array([PERIOD_S, np.nan]),
        np.array(["", "fewer than 3 beats detected"]),
    )
    assert list(table.columns) == [*FEATURES, "reason"]
    assert table.loc[1, list(FEATURES)].isna().all()
    assert table.loc[1, "reason"] == "fewer than 3 beats detected"
    assert table.loc[0, list(FEATURES)].notna().all()


def test_pulse_without_an_upstroke_acceleration_gives_nan_ratios_not_sign_flipped_ones() -> None:
    falling = np.linspace(1.0, 0.0, 100) ** 2
    values, reason = pulse_morphology(falling, PERIOD_S)
    assert np.isnan(values["sdppg_b_a"]) and np.isnan(values["aging_index"])
    assert "a wave" in reason
