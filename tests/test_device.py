"""Compute devices: `<section>.device` resolution, the manifest's device facts, and the device-agnostic
extraction path (loader thread, batch sizing, precision) on every device this machine has.

Device-parametrised tests always run on the CPU; the CUDA case runs where CUDA is available and is a
plain skip elsewhere (CI has no GPU). scripts/gpu_check.sh sets STSAE_TEST_DEVICE=cuda, which turns a
missing GPU into a failure so a GPU check can never pass by skipping.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from stsae.config import ConfigError, load_config
from stsae.data.augment import augment_windows
from stsae.errors import StsaeError
from stsae.models import encoder_runtime
from stsae.models.encoder_runtime import (
    ChunkPrefetcher,
    FastEmbedder,
    batch_from_memory,
    bf16_parity,
    choose_precision,
    resolve_augment_workers,
    resolve_batch_size,
    should_compile,
)
from stsae.models.papagei import embed_batches, load_encoder, random_papagei_s
from stsae.pipeline.manifest import read_manifest
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import extract
from stsae.utils import device as device_mod
from stsae.utils import io
from stsae.utils.device import accelerator_facts, device_facts, resolve_device
from stsae.utils.seeding import derive_seed

CUDA_REQUIRED = os.environ.get("STSAE_TEST_DEVICE") == "cuda"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() or CUDA_REQUIRED), reason="no CUDA device on this machine"))]
no_cuda_here = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend two GPUs are visible: resolution logic only builds torch.device objects, never touches one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


# --- resolve_device -----------------------------------------------------------------------------------

def test_cpu_resolves_to_cpu_even_where_cuda_exists(fake_cuda):
    assert resolve_device("cpu", "extract.device") == torch.device("cpu")


def test_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto", "train.device") == torch.device("cpu")


def test_auto_is_the_first_gpu_when_cuda_is_available(fake_cuda):
    assert resolve_device("auto", "extract.device") == torch.device("cuda", 0)


def test_cuda_without_cuda_is_one_line_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(StsaeError, match=r"^extract\.device: cuda requested but CUDA is not available") as info:
        resolve_device("cuda", "extract.device")
    assert "\n" not in str(info.value)


def test_explicit_index_is_kept(fake_cuda):
    assert resolve_device("cuda:1", "eval.device") == torch.device("cuda", 1)


def test_under_torchrun_each_rank_takes_its_local_rank_gpu(fake_cuda, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda", "extract.device") == torch.device("cuda", 1)
    assert resolve_device("auto", "extract.device") == torch.device("cuda", 1)


@pytest.mark.parametrize(("spec", "local_rank", "origin"), [("cuda:2", None, "index"), ("cuda", "2", "LOCAL_RANK")])
def test_a_gpu_index_beyond_the_visible_ones_is_refused(fake_cuda, monkeypatch, spec, local_rank, origin):
    if local_rank is not None:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    with pytest.raises(StsaeError, match=rf"^train\.device: cuda:2 \({origin}\) but only 2 CUDA device"):
        resolve_device(spec, "train.device")


@pytest.mark.parametrize("section", ["extract", "train", "eval"])
def test_every_computing_section_has_a_device_key_defaulting_to_auto(section):
    assert getattr(load_config(None), section).device == "auto"
    assert getattr(load_config(None, [f"{section}.device=cuda:3"]), section).device == "cuda:3"


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU"])
def test_a_malformed_device_is_a_config_error_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"extract\.device"):
        load_config(None, [f"extract.device={bad}"])


def test_extract_batch_size_takes_auto_or_a_positive_int():
    assert load_config(None).extract.batch_size == "auto"
    assert load_config(None, ["extract.batch_size=64"]).extract.batch_size == 64
    with pytest.raises(ConfigError, match=r"extract\.batch_size"):
        load_config(None, ["extract.batch_size=0"])


# --- manifest facts -----------------------------------------------------------------------------------

def test_cpu_device_facts_have_no_cuda_versions():
    assert device_facts(torch.device("cpu")) == {"device": "cpu", "name": "cpu", "cuda": None, "driver": None,
                                                 "capability": None}


@pytest.mark.skipif(not (torch.cuda.is_available() or CUDA_REQUIRED), reason="no CUDA device on this machine")
def test_cuda_device_facts_name_the_gpu_and_its_versions():
    facts = device_facts(torch.device("cuda", 0))
    assert facts["name"] == torch.cuda.get_device_name(0) and facts["cuda"] == torch.version.cuda
    assert facts["driver"] is None or facts["driver"][0].isdigit()


def test_accelerator_facts_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert accelerator_facts() == {"cuda_available": False, "cuda_devices": 0, "name": None, "cuda": None,
                                   "driver": None}


def test_nvidia_smi_facts_are_none_without_nvidia_smi(monkeypatch):
    monkeypatch.setattr(device_mod.shutil, "which", lambda name: None)
    assert device_mod._nvidia_smi("driver_version") is None


def test_accelerator_facts_read_the_gpu_through_nvidia_smi(fake_cuda, monkeypatch):
    """Planted nvidia-smi answers; no CUDA context is needed (torch's device queries are never called)."""
    answers = {"name": "NVIDIA H200", "driver_version": "580.159.03"}
    monkeypatch.setattr(device_mod, "_nvidia_smi", answers.get)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: pytest.fail("created a CUDA context"))
    facts = accelerator_facts()
    assert facts == {"cuda_available": True, "cuda_devices": 2, "name": "NVIDIA H200", "cuda": torch.version.cuda,
                     "driver": "580.159.03"}


# --- batch size, precision, compile -------------------------------------------------------------------

def test_batch_from_memory_is_the_largest_power_of_two_within_the_fraction():
    mib = 2**20
    assert batch_from_memory(1024 * mib, 1 * mib) == 512
    assert batch_from_memory(1000 * mib, 1 * mib) == 256
    assert batch_from_memory(1024 * mib, 1 * mib, fraction=1.0) == 1024


def test_batch_from_memory_is_capped_and_never_zero():
    assert batch_from_memory(10**15, 1.0) == encoder_runtime.MAX_CUDA_BATCH
    assert batch_from_memory(10, 10**6) == 1


def test_auto_batch_size_on_cpu_is_the_measured_cpu_default():
    model = FastEmbedder(random_papagei_s(0))
    assert resolve_batch_size("auto", model, "fp32", torch.device("cpu")) == encoder_runtime.CPU_BATCH_SIZE == 64
    assert resolve_batch_size(32, model, "fp32", torch.device("cpu")) == 32


def test_auto_precision_on_a_gpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    calibration = np.zeros((2, 1250), np.float32)
    assert choose_precision("auto", torch.nn.Identity(), calibration, 2, torch.device("cuda", 0)) == ("fp32", None)


def test_compile_true_on_cuda_without_triton_is_refused_naming_the_key(monkeypatch):
    monkeypatch.setattr(encoder_runtime, "cxx_compiler", lambda: "g++")
    monkeypatch.setattr(encoder_runtime.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(StsaeError, match=r"extract\.compile: true needs Triton"):
        should_compile(True, 1, torch.device("cuda", 0))
    assert should_compile("auto", 10**7, torch.device("cuda", 0)) is False
    assert should_compile(True, 1, torch.device("cpu")) is True


def test_resume_key_changes_with_device_and_batch_size():
    base = extract.Runtime(torch.device("cpu"), 256, "fp32", False)
    keys = {extract._resume_key("fp", "RANDOM", runtime, 10) for runtime in (
        base, extract.Runtime(torch.device("cuda", 0), 256, "fp32", False),
        extract.Runtime(torch.device("cpu"), 128, "fp32", False))}
    assert len(keys) == 3


# --- the loader thread --------------------------------------------------------------------------------

def _produced(chunk: int, rows: int = 5) -> list[np.ndarray]:
    base = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + 100 * chunk
    return [base, -base]


def test_prefetcher_yields_every_chunk_in_order_with_its_values():
    seen = []
    with ChunkPrefetcher(_produced, range(2, 7), n_views=2, max_rows=5, row_len=4, pin=False) as loader:
        for chunk, views in loader:
            for got, expected in zip(views, _produced(chunk), strict=True):
                np.testing.assert_array_equal(got.numpy(), expected)
            seen.append(chunk)
    assert seen == [2, 3, 4, 5, 6]


def test_prefetcher_short_last_chunk_is_a_prefix_view():
    with ChunkPrefetcher(lambda c: _produced(c, rows=5 if c == 0 else 2), [0, 1], 2, 5, 4, False) as loader:
        shapes = [tuple(views[0].shape) for _, views in loader]
    assert shapes == [(5, 4), (2, 4)]


def test_a_held_chunk_is_never_overwritten_by_the_thread_running_ahead():
    """Two buffers: while the consumer holds chunk k the thread may fill only the other one."""
    with ChunkPrefetcher(_produced, range(6), 2, 5, 4, False) as loader:
        for chunk, views in loader:
            time.sleep(0.02)  # the thread is free to race ahead meanwhile
            np.testing.assert_array_equal(views[0].numpy(), _produced(chunk)[0])


def test_an_error_in_the_loader_thread_reaches_the_consumer():
    def produce(chunk: int) -> list[np.ndarray]:
        if chunk == 2:
            raise ValueError("bad chunk 2")
        return _produced(chunk)

    seen = []
    with pytest.raises(ValueError, match="bad chunk 2"), ChunkPrefetcher(produce, range(5), 2, 5, 4, False) as loader:
        seen.extend(chunk for chunk, _ in loader)
    assert seen == [0, 1]


def test_leaving_early_stops_the_thread():
    before = {t.name for t in threading.enumerate() if t.name == "extract-loader"}
    assert not before
    with ChunkPrefetcher(_produced, range(100), 2, 5, 4, False) as loader:
        for chunk, _ in loader:
            if chunk == 1:
                break
    assert not [t for t in threading.enumerate() if t.name == "extract-loader"]


# --- encoding on a device -----------------------------------------------------------------------------

def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(1250) / 125.0
    phase = 2 * np.pi * rng.uniform(1, 1.5, (n, 1)) * t
    x = np.sin(phase) + 0.3 * np.sin(2 * phase + 1) + 0.05 * rng.standard_normal((n, 1250))
    return ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(np.float32)


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("device", DEVICES)
def test_embed_batches_on_a_device_matches_the_cpu_fp32_reference(device):
    windows = _windows(12)
    embedder = FastEmbedder(random_papagei_s(0))
    reference = _plain_encode(embedder, windows, 5)
    got = embed_batches(embedder.to(device), windows, 5, "fp32", torch.device(device))
    assert got.dtype == np.float32 and got.shape == (12, 512)
    if device == "cpu":
        np.testing.assert_array_equal(got, reference)
    else:
        assert _rel_error(got, reference) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_parity_is_measured_against_fp32_on_the_device(device):
    parity = bf16_parity(FastEmbedder(random_papagei_s(0)).to(device), _windows(8), 4, torch.device(device))
    assert 0.99 < parity.min_cosine <= 1 + 1e-6
    assert 0 < parity.max_rel_error < 0.1


# --- the extract stage --------------------------------------------------------------------------------

SETTINGS = ["encoder.allow_random_weights=true", "extract.batch_size=8", "extract.chunk_rows=16",
            "extract.num_threads=1", "extract.precision=fp32", "extract.compile=false"]


def _windows_dir(root: Path, n: int = 45) -> RunDir:
    """A prepare-stage output of n pulse-like windows; every 7th fails QC."""
    paths = RunDir(root)
    io.write_json(paths.manifest, {"run_name": "device-test"})
    io.save_npy(paths.windows, _windows(n, seed=1))
    ids = np.arange(n, dtype=np.int64)
    io.write_parquet(paths.meta, pd.DataFrame({
        "window_id": ids, "patient_id": [f"P{i // 10}" for i in ids], "record_id": [f"R{i // 5}" for i in ids],
        "segment_idx": ids % 5, "t_start_s": 10.0 * (ids % 5), "split": np.where(ids < 30, "train", "test")}))
    passed = ids % 7 != 3
    io.write_parquet(paths.qc, pd.DataFrame({"window_id": ids, "qc_pass": passed,
                                             "qc_reason": np.where(passed, "", "flatline")}))
    return paths


def _sequential_reference(paths: RunDir, config) -> list[np.ndarray]:
    """What extraction wrote before the loader thread: chunk by chunk, views made and encoded in turn."""
    windows = np.load(paths.windows)
    qc = io.read_parquet(paths.qc)
    ids = np.sort(qc["window_id"].to_numpy()[qc["qc_pass"].to_numpy()])
    embedder = FastEmbedder(load_encoder(config.encoder, config.run.seed)[0])
    augment, seed = config.data.augment, config.run.seed
    test = io.read_parquet(paths.meta).set_index("window_id").loc[ids, "split"].to_numpy() == "test"
    out: list[list[np.ndarray]] = [[], [], []]
    for lo in range(0, len(ids), config.extract.chunk_rows):
        chunk_ids = ids[lo:lo + config.extract.chunk_rows]
        clean = np.ascontiguousarray(windows[chunk_ids])
        out[0].append(_plain_encode(embedder, clean, config.extract.batch_size))
        out[1].append(_plain_encode(embedder, augment_windows(clean, 125.0, augment, seed, chunk_ids,
                                                              augment.stability_families), config.extract.batch_size))
        covered = test[lo:lo + config.extract.chunk_rows]  # the held-out view: test windows, NaN elsewhere
        heldout = np.full((len(chunk_ids), 512), np.nan, dtype=np.float32)
        heldout[covered] = _plain_encode(embedder, augment_windows(
            clean[covered], 125.0, augment, derive_seed(seed, "heldout"), chunk_ids[covered],
            augment.heldout_families), config.extract.batch_size)
        out[2].append(heldout)
    return [np.concatenate(parts) for parts in out]


def _plain_encode(embedder: torch.nn.Module, windows: np.ndarray, batch: int) -> np.ndarray:
    """The encoding loop as it was before devices existed: CPU tensors straight from numpy, numpy output."""
    out = np.empty((len(windows), 512), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            x = torch.from_numpy(windows[start:start + batch]).unsqueeze(1)
            out[start:start + len(x)] = embedder(x).float().numpy()
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_extract_on_a_device_matches_the_sequential_cpu_loop(tmp_path, device):
    """CPU: byte for byte what the unthreaded loop wrote; CUDA: the same embeddings to fp32 rounding."""
    paths = _windows_dir(tmp_path)
    config = load_config(None, [*SETTINGS, f"extract.device={device}"])
    run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
    written = [np.load(p) for p in (paths.z, paths.z_aug, paths.z_aug_heldout)]
    for got, expected in zip(written, _sequential_reference(paths, config), strict=True):
        if device == "cpu":
            assert got.tobytes() == expected.tobytes()
        else:
            assert _rel_error(got, expected) < 1e-4
    facts = read_manifest(paths.manifest)["devices"]["extract"]
    assert facts["device"] == str(resolve_device(device, "extract.device"))
    assert (facts["cuda"] is None) == (device == "cpu")


def test_auto_batch_size_is_capped_at_the_chunk_rows(tmp_path):
    paths = _windows_dir(tmp_path)
    config = load_config(None, [*SETTINGS, "extract.device=cpu", "extract.batch_size=auto"])
    run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
    assert read_manifest(paths.manifest)["encoder"]["batch_size"] == 16


@pytest.mark.slow  # spawning the worker processes costs seconds
def test_augmentation_worker_processes_write_the_bytes_of_the_loader_thread(tmp_path):
    """extract.augment_workers (auto on CUDA) splits each chunk's rows across spawned processes."""
    paths = _windows_dir(tmp_path)
    config = load_config(None, [*SETTINGS, "extract.device=cpu", "extract.augment_workers=2"])
    run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
    written = [np.load(p) for p in (paths.z, paths.z_aug, paths.z_aug_heldout)]
    for got, expected in zip(written, _sequential_reference(paths, config), strict=True):
        assert got.tobytes() == expected.tobytes()
    assert read_manifest(paths.manifest)["encoder"]["augment_workers"] == 2


@pytest.mark.parametrize(("requested", "device", "expected"), [
    ("auto", "cpu", 0), (3, "cpu", 3), ("auto", "cuda", 7), (0, "cuda", 0)])
def test_augment_workers_auto_is_zero_on_cpu_and_the_rank_share_of_cores_on_cuda(monkeypatch, requested, device,
                                                                               expected):
    monkeypatch.setattr(encoder_runtime, "usable_cores", lambda: 16)
    assert resolve_augment_workers(requested, torch.device(device), world_size=2) == expected


@no_cuda_here
def test_extract_device_cuda_without_cuda_fails_before_touching_outputs(tmp_path):
    paths = _windows_dir(tmp_path)
    run_stages(StageContext(load_config(None, SETTINGS), paths, fingerprint=""), ["extract"])
    before = paths.z.read_bytes()
    config = load_config(None, [*SETTINGS, "extract.device=cuda", "extract.batch_size=4"])
    with pytest.raises(StsaeError, match=r"^extract\.device: cuda requested"):
        run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
    assert paths.z.read_bytes() == before


# --- evaluate's concept models ------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_stsae_concept_model_encodes_on_its_device_and_returns_host_arrays(tmp_path, device):
    from stsae.models.registry import ModelInfo, StsaeConceptModel
    from stsae.models.stsae import STSAE

    rng = np.random.default_rng(0)
    z = (rng.standard_normal((40, 512)) + 3).astype(np.float32)
    generator = torch.Generator().manual_seed(0)
    module = STSAE(512, 32, "topk", 4, generator=generator)
    module.init_from_data(z, generator)
    info = ModelInfo("stsae-full-K32-s0", "stsae", "full", 32, 0, tmp_path / "m.safetensors")
    with torch.inference_mode():  # in the model's batches of 16: GEMM rounding depends on the row count
        reference_codes = np.concatenate([module.encode(torch.from_numpy(z[i:i + 16])).numpy() for i in (0, 16, 32)])
    model = StsaeConceptModel(module, info, batch_size=16, device=torch.device(device))
    codes = model.encode(z)
    assert isinstance(codes, np.ndarray) and codes.shape == (40, 32)
    assert next(module.parameters()).device.type == device
    if device == "cpu":
        np.testing.assert_array_equal(codes, reference_codes)
    else:  # same support up to ties at float rounding, same values to fp32 rounding
        np.testing.assert_allclose(codes, reference_codes, rtol=1e-4, atol=1e-4 * np.abs(reference_codes).max())
    assert model.decode(codes).shape == (40, 512)


# --- the GPU benchmark --------------------------------------------------------------------------------

@pytest.mark.slow  # a fresh interpreter importing torch
@no_cuda_here
def test_bench_gpu_stops_with_one_clear_line_without_cuda(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(repo / "benchmarks" / "bench_gpu.py"), "--out", str(tmp_path / "g.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert done.returncode == 2
    assert done.stderr.startswith("bench_gpu.py: no CUDA device here") and done.stderr.count("\n") == 1
    assert not (tmp_path / "g.json").exists()
