"""Augmentation on a torch device: the same draws give numpy's windows, and extract's device path gives
numpy's z_aug.

Stated tolerance (data/augment_torch.py): in float64 the families' arithmetic before the z-score equals
numpy's to 1e-12 (only `sin` and summation order may differ, at ~1e-16), so each float32 output sample is
within one float32 rounding step of numpy's. Device-parametrised tests run on the CPU here and on CUDA
where it exists (scripts/gpu_check.sh makes a missing GPU a failure, as in test_device.py).
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stsae.config import AugmentSection, load_config
from stsae.data.augment import augment_windows, transform, window_draws
from stsae.data.augment_torch import augment_tensor, transform_tensor
from stsae.data.augment_views import ViewPlan, resolve_augment_on
from stsae.errors import StsaeError
from stsae.models.encoder_runtime import max_row_relative_error
from stsae.pipeline.manifest import read_manifest
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import extract

FS = 125.0
FAMILIES = ("warp", "shift", "amplitude", "wander", "noise", "motion")
TINY = Path(__file__).resolve().parent / "configs" / "tiny.yaml"
CUDA_REQUIRED = os.environ.get("STSAE_TEST_DEVICE") == "cuda"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() or CUDA_REQUIRED), reason="no CUDA device on this machine"))]
# extract with augment_on: device vs cpu. Inputs within one float32 step per sample move a random-weight
# PaPaGei-S embedding by ~1e-7 relative (CPU fp32); 1e-5 leaves room for CUDA's own rounding.
MAX_EMBEDDING_REL_ERROR = 1e-5
SMALL = ["data.synthetic.n_patients=8"]  # about 45 windows: each extract takes about a second


def _within_one_float32_step(got: np.ndarray, expected: np.ndarray) -> bool:
    """Every sample of `got` is `expected` or its float32 neighbour (plus 1e-12 for values near 0)."""
    return bool(np.all(np.abs(got - expected) <= np.spacing(np.abs(expected)) + 1e-12))


def _on(device: str, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


cases = st.fixed_dictionaries({
    "windows": st.integers(1, 5).flatmap(lambda n: st.integers(2, 400).flatmap(lambda length: hnp.arrays(
        np.float32, (n, length), elements=st.floats(-50, 50, width=32)))),
    "seed": st.integers(0, 2**32 - 1),
    "first_id": st.integers(0, 2**40),
    "families": st.lists(st.sampled_from(FAMILIES), unique=True),
    "cfg": st.builds(AugmentSection, max_warp=st.floats(0, 0.3), max_shift_s=st.floats(0, 3),
                     motion_burst_prob=st.floats(0, 1), motion_burst_s=st.floats(0, 12),
                     amplitude_scale=st.tuples(st.floats(0.1, 1), st.floats(1, 3))),
})


@pytest.mark.parametrize("device", DEVICES)
@given(case=cases)
@settings(max_examples=60, deadline=None)
def test_torch_augmentation_equals_numpy_from_the_same_draws(device: str, case: dict) -> None:
    """Any windows, ids, seed, family subset and config: float64 arithmetic to 1e-12, output to 1 step."""
    windows, cfg, families = case["windows"], case["cfg"], case["families"]
    ids = case["first_id"] + np.arange(len(windows), dtype=np.int64) * 3
    u, noise = window_draws(case["seed"], ids, windows.shape[1])
    x_t, u_t, noise_t = _on(device, windows.astype(np.float64), u, noise)
    raw = transform(windows.astype(np.float64), u, noise, FS, cfg, set(families))
    raw_t = transform_tensor(x_t, u_t, noise_t, FS, cfg, set(families)).cpu().numpy()
    np.testing.assert_allclose(raw_t, raw, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(raw).max())))

    expected = augment_windows(windows, FS, cfg, case["seed"], ids, families)
    got = augment_tensor(*_on(device, windows, u, noise), FS, cfg, families)
    assert got.dtype == torch.float32 and got.device.type == device
    assert _within_one_float32_step(got.cpu().numpy(), expected)


@pytest.fixture(scope="module")
def pulses() -> np.ndarray:
    """float32[16, 1250] z-scored pulse-like windows with a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(1250) / FS
    phase = 2 * np.pi * rng.uniform(1.0, 1.6, (16, 1)) * t
    x = np.sin(phase) + 0.3 * np.sin(2 * phase + 1) + 0.05 * rng.standard_normal((16, 1250))
    return ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_every_family_subset_of_the_default_config_matches_numpy(device: str, pulses: np.ndarray) -> None:
    """All 64 subsets on real-sized windows; the motion burst in half of them."""
    cfg = AugmentSection(motion_burst_prob=0.5)
    ids = np.arange(len(pulses), dtype=np.int64) * 1000 + 7
    u, noise = window_draws(11, ids, pulses.shape[1])
    for families in itertools.chain.from_iterable(itertools.combinations(FAMILIES, r) for r in range(7)):
        got = augment_tensor(*_on(device, pulses, u, noise), FS, cfg, families).cpu().numpy()
        assert _within_one_float32_step(got, augment_windows(pulses, FS, cfg, 11, ids, families)), families


def test_float32_arithmetic_misses_the_stated_tolerance(pulses: np.ndarray) -> None:
    """Why float64 is the device dtype: in float32 the warped positions (up to 1249) and the burst phase
    round at ~1e-4, far outside one float32 step of numpy's windows."""
    cfg = AugmentSection()
    ids = np.arange(len(pulses), dtype=np.int64)
    u, noise = window_draws(0, ids, pulses.shape[1])
    expected = augment_windows(pulses, FS, cfg, 0, ids, FAMILIES)
    got = augment_tensor(*_on("cpu", pulses, u, noise), FS, cfg, FAMILIES, dtype=torch.float32).numpy()
    assert not _within_one_float32_step(got, expected)
    assert 1e-6 < np.abs(got - expected).max() < 1e-2


def test_a_constant_window_becomes_zeros_as_on_the_host() -> None:
    flat = np.full((2, 100), 3.0, dtype=np.float32)
    ids = np.array([4, 5])
    u, noise = window_draws(0, ids, 100)
    got = augment_tensor(*_on("cpu", flat, u, noise), FS, AugmentSection(), ["amplitude"]).numpy()
    np.testing.assert_array_equal(got, np.zeros_like(flat))
    np.testing.assert_array_equal(got, augment_windows(flat, FS, AugmentSection(), 0, ids, ["amplitude"]))


def test_draws_of_the_wrong_shape_are_refused(pulses: np.ndarray) -> None:
    u, noise = window_draws(0, np.arange(len(pulses)), pulses.shape[1])
    with pytest.raises(ValueError, match="noise"):
        augment_tensor(*_on("cpu", pulses, u, noise[:, :-1]), FS, AugmentSection())


@pytest.mark.parametrize(("requested", "device", "expected"), [
    ("auto", "cpu", "cpu"), ("auto", "cuda", "device"), ("cpu", "cuda", "cpu"), ("device", "cpu", "device")])
def test_augment_on_auto_is_the_device_only_on_cuda(requested: str, device: str, expected: str) -> None:
    assert resolve_augment_on(requested, torch.device(device)) == expected


# --- the extract stage --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """tests/configs/tiny.yaml's prepare output, cut to SMALL."""
    paths = RunDir(tmp_path_factory.mktemp("tiny"))
    run_stages(StageContext(load_config(TINY, SMALL), paths, fingerprint=""), ["prepare"])
    return paths


def _extract(prepared: RunDir, target: Path, *overrides: str) -> RunDir:
    """Extract on a copy of the prepared windows in `target`, with tiny.yaml plus `overrides`."""
    paths = RunDir(target)
    paths.windows.parent.mkdir(parents=True)
    for source, copy in ((prepared.windows, paths.windows), (prepared.meta, paths.meta), (prepared.qc, paths.qc),
                         (prepared.manifest, paths.manifest)):
        copy.write_bytes(source.read_bytes())
    config = load_config(TINY, [*SMALL, "extract.device=cpu", *overrides])
    run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
    return paths


def test_extract_with_augmentation_on_the_device_matches_the_cpu_path(prepared: RunDir, tmp_path: Path) -> None:
    """augment_on: device (run here on the CPU) against the numpy path: z byte for byte (no augmentation),
    z_aug and z_aug_heldout within MAX_EMBEDDING_REL_ERROR per row; the manifest says which path ran.
    (That auto on the CPU keeps the host bytes is test_device.py's sequential-loop test.)"""
    host = _extract(prepared, tmp_path / "host", "extract.augment_on=cpu")
    device = _extract(prepared, tmp_path / "device", "extract.augment_on=device")
    assert device.z.read_bytes() == host.z.read_bytes()
    for path in ("z_aug", "z_aug_heldout"):
        got, expected = np.load(getattr(device, path)), np.load(getattr(host, path))
        encoded = np.isfinite(expected).all(1)  # z_aug_heldout: the test windows only, NaN rows elsewhere
        assert got.shape == expected.shape and encoded.sum() > 10
        np.testing.assert_array_equal(np.isfinite(got).all(1), encoded)
        assert max_row_relative_error(expected[encoded], got[encoded]) < MAX_EMBEDDING_REL_ERROR
    assert read_manifest(device.manifest)["encoder"]["augment_on"] == "device"
    assert read_manifest(host.manifest)["encoder"]["augment_on"] == "cpu"


def test_philox_draws_change_z_aug_but_not_z(prepared: RunDir, tmp_path: Path) -> None:
    """augment_draws: philox is another random stream: z_aug's bytes change (z's do not); no augmentation
    workers are started (the host has nothing to do) and the manifest records the stream."""
    host = _extract(prepared, tmp_path / "host", "extract.augment_on=device")
    philox = _extract(prepared, tmp_path / "philox", "extract.augment_on=device", "extract.augment_draws=philox")
    assert philox.z.read_bytes() == host.z.read_bytes()
    assert np.abs(np.load(philox.z_aug) - np.load(host.z_aug)).max() > 1e-3
    encoder = read_manifest(philox.manifest)["encoder"]
    assert (encoder["augment_draws"], encoder["augment_workers"]) == ("philox", 0)


@pytest.mark.parametrize("draws", ["host", "philox"])
def test_device_views_of_a_window_do_not_depend_on_its_chunk(pulses: np.ndarray, draws: str) -> None:
    """Whatever the draws, a window's augmented views are a function of (seed, window_id): the whole
    chunk and any split of it give the same bytes, in the loader's layout."""
    plan = ViewPlan(AugmentSection(), FS, 4, pulses.shape[1], on="device", draws=draws)
    ids = np.arange(len(pulses), dtype=np.int64) * 5 + 2
    heldout = np.arange(len(pulses)) % 3 == 1  # the rows the held-out view covers (test windows)

    def views(rows: slice, covered: np.ndarray) -> list[torch.Tensor]:
        clean = pulses[rows]
        loaded = [torch.from_numpy(a) for a in [clean, *plan.on_host(clean, ids[rows], covered[rows])]]
        assert [(a.shape[1], a.dtype) for a in loaded] == plan.layout()
        return plan.encoder_inputs(loaded, ids[rows], covered[rows], torch.device("cpu"))

    whole = views(slice(None), heldout)
    parts = [views(slice(0, 5), heldout), views(slice(5, None), heldout)]
    assert len(whole) == 3  # clean, z_aug's windows, z_aug_heldout's windows
    assert [len(view) for view in whole] == [len(pulses), len(pulses), heldout.sum()]
    for i, view in enumerate(whole):
        assert torch.equal(view, torch.cat([part[i] for part in parts]))
    every_row = views(slice(None), np.ones(len(pulses), dtype=bool))
    assert torch.equal(whole[2], every_row[2][torch.from_numpy(heldout)])  # a row's view ignores the others'
    assert torch.equal(whole[1], every_row[1])


def test_philox_draws_with_augmentation_on_the_cpu_are_refused_naming_both_keys(prepared: RunDir,
                                                                                 tmp_path: Path) -> None:
    with pytest.raises(StsaeError, match=r"extract\.augment_draws.*extract\.augment_on"):
        _extract(prepared, tmp_path / "refused", "extract.augment_on=cpu", "extract.augment_draws=philox")
    assert not list(RunDir(tmp_path / "refused").embeddings_dir.glob("*.npy*"))  # refused before any work


@pytest.mark.slow  # spawning the worker processes costs seconds
def test_workers_drawing_for_the_device_write_the_bytes_of_the_loader_thread(prepared: RunDir,
                                                                               tmp_path: Path) -> None:
    """With augment_on: device the augment_workers only draw; splitting the rows across them changes nothing."""
    thread = _extract(prepared, tmp_path / "thread", "extract.augment_on=device", "extract.augment_workers=0")
    workers = _extract(prepared, tmp_path / "workers", "extract.augment_on=device", "extract.augment_workers=2")
    for path in ("z", "z_aug", "z_aug_heldout"):
        assert getattr(workers, path).read_bytes() == getattr(thread, path).read_bytes()
    assert read_manifest(workers.manifest)["encoder"]["augment_workers"] == 2


# --- benchmarks/bench_gpu.py (runs only on CUDA; its code must not rot on CPU-only machines) ---------------

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # a fresh interpreter importing torch: seconds
def test_bench_gpu_help_works_without_cuda() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--help"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0 and "--budget-s" in done.stdout


def test_bench_gpu_augmentation_section_measures_every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its device measurements run on the CPU here (no CUDA sync to wait for) and report numpy parity."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    bench_gpu = importlib.import_module("bench_gpu")
    result = bench_gpu.augmentation(torch.device("cpu"), n_host=8, n_device=16)
    rates = [value for key, value in result.items() if key.endswith("_per_s_one_thread") or key.endswith("_per_s")]
    assert len(rates) == 6 and all(rate > 0 for rate in rates)
    assert result["device_f64_vs_numpy"]["max_abs_diff"] < 1e-6


def test_a_resume_never_mixes_rows_augmented_in_different_places() -> None:
    runtimes = [extract.Runtime(torch.device("cpu"), 8, "fp32", False, 0, on, draws)
                for on, draws in (("cpu", "host"), ("device", "host"), ("device", "philox"))]
    keys = {extract._resume_key("fp", "RANDOM", runtime, 10) for runtime in runtimes}
    assert len(keys) == 3
