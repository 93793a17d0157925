"""Seeded waveform augmentations for z_aug: the stability loss compares f(z_t) with f(z_aug_t).

Why per-window seeding: every random draw for a window comes from a generator seeded by
(seed, window_id) alone, so chunked, resumed and multi-process extraction produce byte-identical
z_aug no matter how windows are batched or ordered. The arithmetic is row-wise (no reduction
across windows), so a window's output never depends on its batch neighbours either.

Transforms are grouped in families, applied in this order when selected: warp (time stretch about
the centre) → shift (circular time shift) → amplitude (gain) → wander (baseline wander) → noise
(Gaussian) → motion (short motion burst), then a per-window z-score. The config chooses which
families make z_aug (what L_stab trains invariance to) and which make z_aug_heldout (what the
consistency metric tests on, never trained against); see `AugmentSection`. Every window draws the
same random numbers whatever the families, so one family's draws never depend on another's.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from stsae.config import AugmentSection
from stsae.data.windowing import zscore
from stsae.utils.seeding import derive_seed

_N_SCALARS = 9  # warp, shift, gain, wander freq, wander phase, burst?, burst start, burst freq, burst phase


def _window_draws(seed: int, window_ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform scalars float64[N, 9] and standard-normal noise float64[N, L], one generator per window."""
    root = derive_seed(seed, "augment")
    scalars = np.empty((len(window_ids), _N_SCALARS))
    noise = np.empty((len(window_ids), length))
    for i, window_id in enumerate(window_ids):
        g = np.random.default_rng([root, int(window_id)])
        scalars[i] = g.random(_N_SCALARS)
        noise[i] = g.standard_normal(length)
    return scalars, noise


def augment_windows(windows: np.ndarray, fs: float, cfg: AugmentSection, seed: int,
                    window_ids: np.ndarray, families: Collection[str] | None = None) -> np.ndarray:
    """Augmented, re-z-scored copies of z-scored windows under the chosen transform families.

    windows: float32[N, L] at fs Hz; window_ids: int64[N] (the windows' ids in meta.parquet);
    families: subset of warp, shift, amplitude, wander, noise, motion (None: cfg.stability_families).
    Returns float32[N, L]. Row i depends only on (windows[i], fs, cfg, seed, window_ids[i], families).
    """
    chosen = set(cfg.stability_families if families is None else families)
    x = np.asarray(windows, dtype=np.float64)
    ids = np.asarray(window_ids)
    if x.ndim != 2 or x.shape[1] < 2 or ids.shape != (x.shape[0],):
        raise ValueError(f"windows must be [N, L>=2] and window_ids [N]; got {x.shape} and {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"window_ids must be integers, got dtype {ids.dtype}")
    n, length = x.shape
    u, noise = _window_draws(seed, ids, length)
    rows = np.arange(n)[:, None]
    t = np.arange(length, dtype=np.float64)[None, :]

    if "warp" in chosen:  # resample at centre + (t - centre) * stretch, linear interpolation, edges held
        stretch = 1.0 + cfg.max_warp * (2.0 * u[:, 0:1] - 1.0)
        centre = (length - 1) / 2.0
        pos = np.clip(centre + (t - centre) * stretch, 0.0, length - 1.0)
        left = np.minimum(np.floor(pos).astype(np.int64), length - 2)
        frac = pos - left
        x = x[rows, left] * (1.0 - frac) + x[rows, left + 1] * frac
    if "shift" in chosen:
        max_shift = round(cfg.max_shift_s * fs)
        shift = np.floor(u[:, 1] * (2 * max_shift + 1)).astype(np.int64) - max_shift
        x = x[rows, (np.arange(length)[None, :] - shift[:, None]) % length]
    if "amplitude" in chosen:
        low, high = cfg.amplitude_scale
        x = x * (low + (high - low) * u[:, 2:3])
    if "wander" in chosen:
        f_low, f_high = cfg.baseline_wander_hz
        wander_hz = f_low + (f_high - f_low) * u[:, 3:4]
        x = x + cfg.baseline_wander_amp * np.sin(2 * np.pi * wander_hz * t / fs + 2 * np.pi * u[:, 4:5])
    if "noise" in chosen:
        x = x + cfg.noise_std * noise

    burst_len = min(length, round(cfg.motion_burst_s * fs))
    if "motion" in chosen and burst_len > 0:
        has_burst = u[:, 5:6] < cfg.motion_burst_prob
        start = np.floor(u[:, 6:7] * (length - burst_len + 1))
        inside = (t >= start) & (t < start + burst_len)
        envelope = np.sin(np.pi * np.clip((t - start) / burst_len, 0.0, 1.0))  # smooth on and off
        burst_hz = 0.5 + 3.5 * u[:, 7:8]  # motion lives in 0.5–4 Hz, inside the pulse band
        burst = cfg.motion_burst_amp * envelope * np.sin(2 * np.pi * (burst_hz * t / fs + u[:, 8:9]))
        x = x + np.where(has_burst & inside, burst, 0.0)
    return zscore(x)
