"""The augmentation arithmetic of data/augment.py in torch, so z_aug's windows can be made on the GPU.

Why: on a GPU the encoder outruns one loader thread making augmented windows in numpy (≈ 80 µs per
window and view on one core), and the arithmetic (warp, shift, gain, wander, noise, motion, z-score) is
row-wise array code that a GPU does for free. The per-window draws stay where they are
(`augment.window_draws`, one numpy generator per (seed, window_id), in the loader thread), because they
are what make z_aug independent of batching; `augment_tensor` takes those same draws and repeats
`augment.transform` operation by operation, in the same order, on any device.

Precision: float64 by default, on every device. Then +, −, ×, / and floor round exactly as numpy's do, so
the only differences are `sin` (≤ 1 ulp between libm and the device's implementation) and the z-score's
summation order: the pre-z-score result equals numpy's to ~1e-15 and the float32 output to ≤ 1 float32
ulp (identical bytes on the CPU, measured). float64 should cost little: the work is a few dozen
elementwise, memory-bound passes over [N, 1250] (≈ 10 kB per window and pass), against 0.152 GFLOP per
window for the encoder; benchmarks/bench_gpu.py measures it against float32 on the GPU (not yet measured
there). float32 (`dtype=torch.float32`) is for that comparison, not for extraction: its warp positions
near 1250 and burst phases round at ~1e-4, so its windows differ from numpy's by up to ~5e-4.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch

from stsae.config import AugmentSection
from stsae.data.augment import burst_samples, chosen_families, max_shift_samples

ZSCORE_MIN_STD = 1e-12  # as windowing.zscore: a constant window becomes all zeros


def augment_tensor(windows: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, fs: float, cfg: AugmentSection,
                   families: Collection[str] | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`augment.augment_windows` from given draws, on the windows' device.

    windows: float32[N, L] z-scored windows; u: float[N, 9] and noise: float[N, L], the rows'
    `augment.window_draws` (same device); families: as in `augment_windows`. Computes in `dtype`
    (see module doc) and returns float32[N, L] on the same device.
    """
    n, length = windows.shape
    if length < 2 or u.shape != (n, 9) or noise.shape != (n, length):
        raise ValueError(f"windows must be [N, L>=2] with u [N, 9] and noise [N, L]; got {tuple(windows.shape)}, "
                         f"{tuple(u.shape)} and {tuple(noise.shape)}")
    x = transform_tensor(windows.to(dtype), u.to(dtype), noise.to(dtype), fs, cfg, chosen_families(cfg, families))
    return zscore_tensor(x).to(torch.float32)


def zscore_tensor(x: torch.Tensor) -> torch.Tensor:
    """Per-row z-score of float[N, L] (population std, as numpy's), zeros where a row is constant."""
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True, correction=0)
    return torch.where(std > ZSCORE_MIN_STD, (x - mean) / std, torch.zeros((), dtype=x.dtype, device=x.device))


def transform_tensor(x: torch.Tensor, u: torch.Tensor, noise: torch.Tensor, fs: float, cfg: AugmentSection,
                     chosen: Collection[str]) -> torch.Tensor:
    """`augment.transform` in torch: float[N, L] windows and their draws → float[N, L], one dtype throughout.

    Every expression keeps numpy's operand order, so each elementwise step rounds as numpy's does."""
    length = x.shape[1]
    t = torch.arange(length, dtype=x.dtype, device=x.device)[None, :]
    if "warp" in chosen:
        x = _warp(x, t, 1.0 + cfg.max_warp * (2.0 * u[:, 0:1] - 1.0))
    if "shift" in chosen:
        max_shift = max_shift_samples(cfg, fs)
        shift = torch.floor(u[:, 1] * (2 * max_shift + 1)).long() - max_shift
        positions = torch.arange(length, device=x.device)[None, :]
        x = torch.gather(x, 1, (positions - shift[:, None]) % length)
    if "amplitude" in chosen:
        low, high = cfg.amplitude_scale
        x = x * (low + (high - low) * u[:, 2:3])
    if "wander" in chosen:
        f_low, f_high = cfg.baseline_wander_hz
        wander_hz = f_low + (f_high - f_low) * u[:, 3:4]
        x = x + cfg.baseline_wander_amp * torch.sin(2 * math.pi * wander_hz * t / fs + 2 * math.pi * u[:, 4:5])
    if "noise" in chosen:
        x = x + cfg.noise_std * noise
    burst_len = burst_samples(cfg, fs, length)
    if "motion" in chosen and burst_len > 0:
        x = x + _motion_burst(u, t, burst_len, cfg.motion_burst_prob, cfg.motion_burst_amp, fs)
    return x


def _warp(x: torch.Tensor, t: torch.Tensor, stretch: torch.Tensor) -> torch.Tensor:
    """Resample each row at centre + (t − centre) · stretch[row], linear interpolation, edges held."""
    length = x.shape[1]
    centre = (length - 1) / 2.0
    pos = torch.clamp(centre + (t - centre) * stretch, 0.0, length - 1.0)
    left = torch.clamp(torch.floor(pos).long(), max=length - 2)
    frac = pos - left
    return torch.gather(x, 1, left) * (1.0 - frac) + torch.gather(x, 1, left + 1) * frac


def _motion_burst(u: torch.Tensor, t: torch.Tensor, burst_len: int, prob: float, amp: float,
                  fs: float) -> torch.Tensor:
    """The motion family's additive burst: a sine of 0.5–4 Hz under a half-sine envelope, zero outside it."""
    length = t.shape[1]
    has_burst = u[:, 5:6] < prob
    start = torch.floor(u[:, 6:7] * (length - burst_len + 1))
    inside = (t >= start) & (t < start + burst_len)
    envelope = torch.sin(math.pi * torch.clamp((t - start) / burst_len, 0.0, 1.0))
    burst_hz = 0.5 + 3.5 * u[:, 7:8]
    burst = amp * envelope * torch.sin(2 * math.pi * (burst_hz * t / fs + u[:, 8:9]))
    return torch.where(has_burst & inside, burst, torch.zeros((), dtype=t.dtype, device=t.device))
