"""Augmentations: seeded per window_id, independent of batching, and small enough to keep the pulse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.config import AugmentSection, SyntheticSection, WindowingSection
from stsae.data.augment import augment_windows
from stsae.data.synthetic import iter_cohort
from stsae.data.windowing import window_signals, zscore

FS = 125.0


@pytest.fixture(scope="module")
def windows() -> np.ndarray:
    cfg = SyntheticSection(n_patients=4, records_per_patient=1, minutes_per_record=1.0, artifact_fraction=0.0)
    chunk = next(iter_cohort(cfg, 0, 10.0))
    return window_signals(chunk.signals, chunk.fs, WindowingSection()).windows


@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_augmentation_depends_only_on_seed_and_window_id(windows: np.ndarray, data: st.DataObject) -> None:
    ids = np.arange(len(windows), dtype=np.int64) * 7 + 100
    whole = augment_windows(windows, FS, AugmentSection(), 3, ids)
    order = np.array(data.draw(st.permutations(range(len(windows)))))
    batch = data.draw(st.integers(1, len(windows)))
    parts = [augment_windows(windows[order[i:i + batch]], FS, AugmentSection(), 3, ids[order[i:i + batch]])
             for i in range(0, len(order), batch)]
    assert np.concatenate(parts).tobytes() == whole[order].tobytes()


def test_different_seed_or_window_id_gives_different_augmentation(windows: np.ndarray) -> None:
    ids = np.arange(len(windows), dtype=np.int64)
    base = augment_windows(windows, FS, AugmentSection(), 0, ids)
    assert not np.array_equal(base, augment_windows(windows, FS, AugmentSection(), 1, ids))
    assert not np.array_equal(base, augment_windows(windows, FS, AugmentSection(), 0, ids + 1))


def test_output_is_float32_and_z_scored(windows: np.ndarray) -> None:
    out = augment_windows(windows, FS, AugmentSection(), 0, np.arange(len(windows)))
    assert out.dtype == np.float32 and out.shape == windows.shape
    assert np.allclose(out.mean(axis=1), 0.0, atol=1e-5)
    assert np.allclose(out.std(axis=1), 1.0, atol=1e-4)


def test_all_augmentations_off_returns_the_z_scored_input(windows: np.ndarray) -> None:
    off = AugmentSection(amplitude_scale=(1.0, 1.0), baseline_wander_amp=0.0, noise_std=0.0, max_shift_s=0.0,
                         max_warp=0.0, motion_burst_prob=0.0)
    out = augment_windows(windows, FS, off, 0, np.arange(len(windows)))
    assert np.allclose(out, zscore(windows), atol=1e-5)


def test_default_augmentation_keeps_the_pulse_recognisable(windows: np.ndarray) -> None:
    out = augment_windows(windows, FS, AugmentSection(max_shift_s=0.0), 0, np.arange(len(windows)))
    corr = (out * windows).mean(axis=1)  # both z-scored: mean product is the correlation
    assert np.median(corr) > 0.7
    assert corr.max() < 0.9999  # but every window did change


def test_window_ids_must_match_windows(windows: np.ndarray) -> None:
    with pytest.raises(ValueError, match="window_ids"):
        augment_windows(windows, FS, AugmentSection(), 0, np.arange(len(windows) - 1))


def test_no_family_returns_the_z_scored_input(windows: np.ndarray) -> None:
    out = augment_windows(windows, FS, AugmentSection(), 0, np.arange(len(windows)), families=[])
    assert np.allclose(out, zscore(windows), atol=1e-5)


def test_motion_family_changes_only_a_burst_of_motion_burst_s(windows: np.ndarray) -> None:
    cfg = AugmentSection(motion_burst_prob=1.0, motion_burst_s=0.5)
    raw = augment_windows(windows, FS, cfg, 0, np.arange(len(windows)), families=["motion"])
    clean = zscore(windows)
    # re-z-scoring rescales the whole window: undo that affine map, fit on the samples outside the
    # burst (refit without the worst-fitting tenth twice, since the burst is where the fit misses)
    for out, ref in zip(raw, clean, strict=True):
        keep = np.ones(len(ref), dtype=bool)
        for _ in range(3):
            slope, intercept = np.polyfit(ref[keep], out[keep], 1)
            residual = np.abs(out - (slope * ref + intercept))
            keep = residual < np.quantile(residual, 0.9)
        changed = residual > 0.05
        span = np.flatnonzero(changed)
        assert span.size and span[-1] - span[0] < 0.5 * FS


def test_time_warp_moves_a_late_pulse_feature_by_milliseconds(windows: np.ndarray) -> None:
    """Why warp is not a stability family: ±3 % stretch about the centre moves a feature 3 s from the
    centre by up to ≈ 90 ms, and even a reflected wave 0.3 s after its foot by ≈ 9 ms, which is the
    size of several planted years of vascular age. The warp family alone does move the samples."""
    t = np.arange(1250) / FS
    pulse = np.exp(-0.5 * ((t - 8.0) / 0.05) ** 2)[None, :].astype(np.float32)
    out = augment_windows(pulse, FS, AugmentSection(max_warp=0.03), 0, np.array([5]), families=["warp"])
    moved_s = abs(np.argmax(out[0]) - np.argmax(pulse[0])) / FS
    assert 0 < moved_s <= 0.03 * 3.0 + 1 / FS


def test_default_stability_families_leave_out_warp_and_motion() -> None:
    cfg = AugmentSection()
    assert "warp" not in cfg.stability_families and "motion" in cfg.heldout_families


def test_a_family_cannot_be_both_trained_and_held_out() -> None:
    with pytest.raises(ValueError, match="heldout_families shares"):
        AugmentSection(stability_families=["noise", "motion"], heldout_families=["motion"])
