"""Philox augmentation draws (`extract.augment_draws: philox`): the published generator, keyed by
(seed, window_id) alone, with the distributions the augmentations expect, on every device."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from stsae.data.philox import _mulhilo, philox4x32_10, philox_draws

CUDA_REQUIRED = os.environ.get("STSAE_TEST_DEVICE") == "cuda"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() or CUDA_REQUIRED), reason="no CUDA device on this machine"))]
WORD = st.integers(0, 2**32 - 1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("counter", "key", "expected"), [  # Random123's kat_vectors for philox4x32_10
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_matches_the_published_known_answers(device, counter, key, expected):
    words = philox4x32_10(tuple(torch.tensor([c], device=device) for c in counter), key)
    assert tuple(int(w) for w in words) == expected


@given(a=WORD, multiplier=WORD)
@settings(max_examples=200, deadline=None)
def test_mulhilo_is_the_exact_64_bit_product_split_in_words(a, multiplier):
    high, low = _mulhilo(torch.tensor([a]), multiplier)
    assert (int(high) << 32) | int(low) == a * multiplier


@given(seed=st.integers(0, 2**32 - 1), ids=st.lists(st.integers(0, 2**62), min_size=1, max_size=6),
       data=st.data())
@settings(max_examples=25, deadline=None)
def test_a_windows_draws_depend_only_on_seed_and_window_id(seed, ids, data):
    order = data.draw(st.permutations(range(len(ids))))
    u, noise = philox_draws(seed, torch.tensor(ids), 31)
    u_perm, noise_perm = philox_draws(seed, torch.tensor(ids)[order], 31)
    assert torch.equal(u_perm, u[order]) and torch.equal(noise_perm, noise[order])


def test_another_seed_or_window_id_gives_other_draws():
    base = philox_draws(0, torch.tensor([5]), 64)
    for other in (philox_draws(1, torch.tensor([5]), 64), philox_draws(0, torch.tensor([6]), 64),
                  philox_draws(0, torch.tensor([5 + 2**32]), 64)):  # the id's high word counts too
        assert not torch.equal(base[0], other[0]) and not torch.equal(base[1], other[1])


def test_a_shorter_window_draws_a_prefix_of_the_same_noise():
    _, long = philox_draws(3, torch.tensor([1, 2]), 1250)
    u, short = philox_draws(3, torch.tensor([1, 2]), 7)
    assert short.shape == (2, 7) and u.shape == (2, 9)
    assert torch.equal(short, long[:, :7])


def test_draws_are_uniform_and_standard_normal_without_serial_correlation():
    """Fixed seed, so this is deterministic: KS tests at p > 1e-3 and correlations within 4 standard errors."""
    u, noise = philox_draws(7, torch.arange(2000), 1250)
    assert u.dtype == noise.dtype == torch.float64
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    values = noise.numpy()
    assert stats.kstest(values[:, :500].ravel(), "norm").pvalue > 1e-3
    se = 1 / np.sqrt(values.size)
    assert abs(np.corrcoef(values[:, :-1].ravel(), values[:, 1:].ravel())[0, 1]) < 4 * se  # within a window
    assert abs(np.corrcoef(values[:-1].ravel(), values[1:].ravel())[0, 1]) < 4 * se  # neighbouring ids
    assert abs(np.corrcoef(u[:, 0].numpy(), u[:, 1].numpy())[0, 1]) < 4 / np.sqrt(len(u))  # two parameters


@pytest.mark.parametrize("device", DEVICES[1:])
def test_a_gpu_draws_the_numbers_of_the_cpu(device):
    """Integer words are exact everywhere; the floats differ at most by the device's log/cos/sin rounding."""
    ids = torch.tensor([0, 9, 2**40 + 3])
    u_cpu, noise_cpu = philox_draws(2, ids, 1250)
    u, noise = philox_draws(2, ids.to(device), 1250)
    assert torch.equal(u.cpu(), u_cpu)
    torch.testing.assert_close(noise.cpu(), noise_cpu, rtol=1e-12, atol=1e-12)


def test_negative_window_ids_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        philox_draws(0, torch.tensor([3, -1]), 10)
