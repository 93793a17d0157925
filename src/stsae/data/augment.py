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

The work splits in two: the draws (`window_draws`, one generator per window: sequential host work, about
40 % of the time) and the families' arithmetic (`transform`, row-wise array code, about 60 %).
data/augment_torch.py runs the same arithmetic on any torch device from the same draws, so extraction on
a GPU draws in the loader thread and transforms on the device (`extract.augment_on`); data/philox.py can
make the draws on the device too, as another random stream (`extract.augment_draws: philox`, opt-in).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from stsae.config import AugmentSection
from stsae.data.windowing import zscore
from stsae.utils.seeding import derive_seed

_N_SCALARS = 9  # warp, shift, gain, wander freq, wander phase, burst?, burst start, burst freq, burst phase


def window_draws(seed: int, window_ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform scalars float64[N, 9] and standard-normal noise float64[N, L], one generator per window.

    Column j of the scalars always feeds the same parameter (see `transform`), whatever the families."""
    root = derive_seed(seed, "augment")
    scalars = np.empty((len(window_ids), _N_SCALARS))
    noise = np.empty((len(window_ids), length))
    for i, window_id in enumerate(window_ids):
        g = np.random.default_rng([root, int(window_id)])
        scalars[i] = g.random(_N_SCALARS)
        noise[i] = g.standard_normal(length)
    return scalars, noise


def max_shift_samples(cfg: AugmentSection, fs: float) -> int:
    """The shift family's largest circular shift, in samples either way."""
    return round(cfg.max_shift_s * fs)


def burst_samples(cfg: AugmentSection, fs: float, length: int) -> int:
    """The motion family's burst length in samples, at most the window (0: no burst)."""
    return min(length, round(cfg.motion_burst_s * fs))


def chosen_families(cfg: AugmentSection, families: Collection[str] | None) -> set[str]:
    """The families to apply: `families`, or the stability families when None."""
    return set(cfg.stability_families if families is None else families)


def check_rows(shape: tuple[int, ...], ids_shape: tuple[int, ...], ids_dtype: np.dtype | str) -> None:
    """ValueError unless windows are [N, L>=2] and window_ids are integer [N] (shared by both back ends)."""
    if len(shape) != 2 or shape[1] < 2 or ids_shape != (shape[0],):
        raise ValueError(f"windows must be [N, L>=2] and window_ids [N]; got {shape} and {ids_shape}")
    if shape[0] and not np.issubdtype(np.dtype(ids_dtype), np.integer):
        raise ValueError(f"window_ids must be integers, got dtype {ids_dtype}")


def augment_windows(windows: np.ndarray, fs: float, cfg: AugmentSection, seed: int,
                    window_ids: np.ndarray, families: Collection[str] | None = None) -> np.ndarray:
    """Augmented, re-z-scored copies of z-scored windows under the chosen transform families.

    windows: float32[N, L] at fs Hz; window_ids: int64[N] (the windows' ids in meta.parquet);
    families: subset of warp, shift, amplitude, wander, noise, motion (None: cfg.stability_families).
    Returns float32[N, L]. Row i depends only on (windows[i], fs, cfg, seed, window_ids[i], families).
    """
    x = np.asarray(windows, dtype=np.float64)
    ids = np.asarray(window_ids)
    check_rows(x.shape, ids.shape, ids.dtype)
    u, noise = window_draws(seed, ids, x.shape[1])
    return zscore(transform(x, u, noise, fs, cfg, chosen_families(cfg, families)))


def transform(x: np.ndarray, u: np.ndarray, noise: np.ndarray, fs: float, cfg: AugmentSection,
              chosen: Collection[str]) -> np.ndarray:
    """The families' arithmetic before the z-score: float64[N, L] windows and their draws (`window_draws`:
    u float64[N, 9], noise float64[N, L]) → float64[N, L]. Row-wise: row i uses row i of each input only."""
    n, length = x.shape
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
        max_shift = max_shift_samples(cfg, fs)
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

    burst_len = burst_samples(cfg, fs, length)
    if "motion" in chosen and burst_len > 0:
        has_burst = u[:, 5:6] < cfg.motion_burst_prob
        start = np.floor(u[:, 6:7] * (length - burst_len + 1))
        inside = (t >= start) & (t < start + burst_len)
        envelope = np.sin(np.pi * np.clip((t - start) / burst_len, 0.0, 1.0))  # smooth on and off
        burst_hz = 0.5 + 3.5 * u[:, 7:8]  # motion lives in 0.5–4 Hz, inside the pulse band
        burst = cfg.motion_burst_amp * envelope * np.sin(2 * np.pi * (burst_hz * t / fs + u[:, 8:9]))
        x = x + np.where(has_burst & inside, burst, 0.0)
    return x
