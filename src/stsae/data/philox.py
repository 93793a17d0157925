"""Counter-based augmentation draws on a torch device: Philox4x32-10 keyed by (seed, window_id).

Why: `augment.window_draws` seeds one numpy generator per window, which keeps z_aug independent of batching
but is sequential host work (≈ 30 µs per window and view on one core), the part of the augmentation a GPU
cannot take over. A counter-based generator is a pure function of (key, counter), so every draw of every
window of a chunk is one elementwise computation on the device, still a function of (seed, window_id) alone.
It is a different random stream from numpy's, so `extract.augment_draws: philox` changes z_aug's bytes
(same distributions); it is opt-in and recorded in the manifest.

Philox4x32-10 (Salmon et al., SC'11; Random123's reference, cuRAND's default) is computed in int64
tensors, which every device supports: 32-bit words, and each 32×32-bit product split at 16 bits so no
intermediate reaches 2^63. Integer results are identical on every device; the floats derived from them
differ at most by the device's `log`/`cos`/`sin` rounding.
"""

from __future__ import annotations

import math

import torch

from stsae.utils.seeding import derive_seed

MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_ROUNDS = 10
N_SCALARS = 9  # as augment.window_draws: one uniform per scalar parameter
_SCALAR_STREAM, _NOISE_STREAM = 0, 1


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a · multiplier, for 32-bit words a in int64 without overflow."""
    high_part = a * (multiplier >> 16)  # < 2^48
    low_sum = ((high_part & 0xFFFF) << 16) + a * (multiplier & 0xFFFF)  # < 2^49
    return (high_part >> 16) + (low_sum >> 32), low_sum & MASK32


def philox4x32_10(counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                  key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 of counters (four int64 tensors of 32-bit words, broadcastable) under a 64-bit key
    (two 32-bit words): four int64 tensors of 32-bit output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(_ROUNDS):
        if round_index:
            k0, k1 = (k0 + _WEYL[0]) & MASK32, (k1 + _WEYL[1]) & MASK32
        hi0, lo0 = _mulhilo(c0, _MULTIPLIERS[0])
        hi1, lo1 = _mulhilo(c2, _MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _unit_doubles(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in [0, 1) with 53 random bits from two 32-bit words."""
    return ((high >> 5) * 67108864 + (low >> 6)).to(torch.float64) * 2.0**-53


def _stream(key: tuple[int, int], ids: torch.Tensor, stream: int, blocks: int) -> torch.Tensor:
    """2·blocks uniform float64 per window: Philox blocks 0..blocks-1 of (stream, window_id) → [N, 2·blocks]."""
    block = torch.arange(blocks, dtype=torch.int64, device=ids.device)[None, :]
    window = ids.to(torch.int64)[:, None]
    words = philox4x32_10((block, torch.full_like(block, stream), window & MASK32, window >> 32), key)
    pairs = torch.stack([_unit_doubles(words[0], words[1]), _unit_doubles(words[2], words[3])], dim=2)
    return pairs.reshape(len(ids), 2 * blocks)


def philox_draws(seed: int, window_ids: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The counterpart of `augment.window_draws` on `window_ids`' device: uniform scalars float64[N, 9]
    and standard-normal noise float64[N, L] (Box–Muller), row i a function of (seed, window_ids[i]) only.

    window_ids: int64[N], non-negative (< 2^63). The key is two 32-bit seeds derived from `seed`.
    """
    if window_ids.ndim != 1 or (window_ids.numel() and int(window_ids.min()) < 0):
        raise ValueError(f"window_ids must be non-negative int64[N], got shape {tuple(window_ids.shape)}")
    key = (derive_seed(seed, "augment-philox", 0), derive_seed(seed, "augment-philox", 1))
    scalars = _stream(key, window_ids, _SCALAR_STREAM, -(-N_SCALARS // 2))[:, :N_SCALARS]
    uniform = _stream(key, window_ids, _NOISE_STREAM, -(-length // 2))
    radius = torch.sqrt(-2.0 * torch.log1p(-uniform[:, 0::2]))  # 1 − u ∈ (0, 1]: log is finite
    angle = 2.0 * math.pi * uniform[:, 1::2]
    noise = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=2).reshape(len(window_ids), -1)
    return scalars, noise[:, :length]
