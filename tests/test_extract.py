"""extract stage: QC-passed rows in order, complete files only, kill-and-resume and torchrun byte equality."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.config import load_config
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.models.encoder_runtime import FastEmbedder, cxx_compiler
from stsae.models.papagei import embed_batches, load_encoder
from stsae.pipeline.manifest import read_manifest
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import extract
from stsae.utils import io


class SimulatedCrash(Exception):
    """Raised by the patched encoder to stop a run mid-way."""


SETTINGS = ["encoder.allow_random_weights=true", "extract.device=cpu", "extract.batch_size=8", "extract.chunk_rows=16",
            "extract.num_threads=1", "extract.precision=fp32"]


def write_windows_dir(root: Path, n: int = 60) -> RunDir:
    """A prepare-stage output with n random z-scored windows; every 7th window fails QC.

    With a manifest, as a real run leaves one: the CLI refuses a non-empty directory without it."""
    paths = RunDir(root)
    io.write_json(paths.manifest, {"run_name": "extract-test"})
    rng = np.random.default_rng(0)
    io.save_npy(paths.windows, rng.standard_normal((n, 1250)).astype(np.float32))
    ids = np.arange(n, dtype=np.int64)
    io.write_parquet(paths.meta, pd.DataFrame({
        "window_id": ids, "patient_id": [f"P{i // 10}" for i in ids],
        "record_id": [f"R{i // 5}" for i in ids],
        "segment_idx": ids % 5, "t_start_s": 10.0 * (ids % 5), "split": np.where(ids < 40, "train", "test"),
    }))
    passed = ids % 7 != 3
    io.write_parquet(paths.qc, pd.DataFrame({"window_id": ids[::-1], "qc_pass": passed[::-1],
                                             "qc_reason": np.where(passed, "", "flatline")[::-1]}))
    return paths


def _extract(paths: RunDir, *extra: str) -> None:
    config = load_config(None, [*SETTINGS, *extra])
    run_stages(StageContext(config, paths, fingerprint=""), ["extract"])


def _bytes(paths: RunDir) -> tuple[bytes, bytes, bytes]:
    return paths.z.read_bytes(), paths.z_aug.read_bytes(), paths.z_aug_heldout.read_bytes()


@pytest.fixture
def counted_encoding(monkeypatch):
    """Counts encoder calls; `fail_after` makes the call after that many raise (a crash mid-run)."""
    state = {"calls": 0, "fail_after": None}

    def counting(*args, **kwargs):
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise SimulatedCrash
        state["calls"] += 1
        return embed_batches(*args, **kwargs)

    monkeypatch.setattr(extract, "embed_batches", counting)
    return state


def test_extract_writes_qc_passed_windows_in_window_id_order(tmp_path):
    paths = write_windows_dir(tmp_path)
    _extract(paths)
    emb = load_embeddings(paths)
    expected_ids = np.flatnonzero(np.arange(60) % 7 != 3)
    assert emb.z.shape == emb.z_aug.shape == (len(expected_ids), 512)
    np.testing.assert_array_equal(emb.index["window_id"], expected_ids)
    assert list(emb.index.columns) == ["window_id", "patient_id", "record_id", "segment_idx", "split"]
    assert sorted(p.name for p in paths.embeddings_dir.iterdir()) == ["index.parquet", "stage.json", "z.npy",
                                                                     "z_aug.npy", "z_aug_heldout.npy"]


def test_z_is_the_encoding_of_the_clean_windows_and_z_aug_differs(tmp_path):
    paths = write_windows_dir(tmp_path)
    _extract(paths)
    emb = load_embeddings(paths)
    model, _ = load_encoder(load_config(None, SETTINGS).encoder, seed=0)
    windows = np.load(paths.windows)[emb.index["window_id"].to_numpy()[:8]]
    np.testing.assert_array_equal(emb.z[:8], embed_batches(FastEmbedder(model), windows, 8, "fp32"))
    assert not np.allclose(emb.z_aug[:8], emb.z[:8])


def test_heldout_view_encodes_only_the_heldout_families_on_test_windows(tmp_path):
    """z_aug holds the stability families (no warp, no motion by default) on every window; z_aug_heldout
    the held-out motion family under its own seed, so L_stab never sees the view the consistency metric
    tests, and only on the test windows the metric reads (NaN rows elsewhere)."""
    from stsae.data.augment import augment_windows
    from stsae.utils.seeding import derive_seed

    paths = write_windows_dir(tmp_path)
    _extract(paths)
    emb = load_embeddings(paths)
    config = load_config(None, SETTINGS)
    embedder = FastEmbedder(load_encoder(config.encoder, seed=0)[0])
    augment = config.data.augment
    assert "warp" not in augment.stability_families and augment.heldout_families == ["motion"]
    heldout = np.load(paths.z_aug_heldout)
    test = emb.rows("test")
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(heldout).all(1)), test)
    assert np.isnan(heldout[emb.rows("train")]).all()
    for array, families, seed, rows in ((emb.z_aug, augment.stability_families, 0, np.arange(8)),
                                        (heldout, augment.heldout_families, derive_seed(0, "heldout"), test[:8])):
        ids = emb.index["window_id"].to_numpy()[rows]
        windows = np.load(paths.windows)[ids]
        expected = embed_batches(embedder, augment_windows(windows, 125.0, augment, seed, ids, families), 8, "fp32")
        np.testing.assert_allclose(array[rows], expected, rtol=1e-5, atol=1e-6)


def test_no_heldout_families_means_no_heldout_file(tmp_path):
    paths = write_windows_dir(tmp_path)
    _extract(paths, "data.augment.heldout_families=[]")
    assert not paths.z_aug_heldout.exists() and paths.z_aug.exists()


def test_manifest_records_random_encoder_identity_and_precision(tmp_path):
    paths = write_windows_dir(tmp_path)
    _extract(paths)
    fact = read_manifest(paths.manifest)["encoder"]
    assert fact["weights"] is None and fact["sha256"] == "RANDOM" and fact["precision"] == "fp32"


@pytest.mark.slow
@pytest.mark.needs(cxx_compiler() is not None, "no C++ compiler for torch.compile (install g++)")
def test_compiled_extraction_matches_eager_and_is_recorded(tmp_path):
    eager = write_windows_dir(tmp_path / "eager")
    _extract(eager, "extract.compile=false")
    compiled = write_windows_dir(tmp_path / "compiled")
    _extract(compiled, "extract.compile=true")
    for name in ("z", "z_aug"):
        expected = getattr(load_embeddings(eager), name)
        np.testing.assert_allclose(getattr(load_embeddings(compiled), name), expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max())
    assert "torch.compile" in read_manifest(compiled.manifest)["encoder"]["runtime"]
    assert "torch.compile" not in read_manifest(eager.manifest)["encoder"]["runtime"]


def test_a_crashed_run_leaves_no_final_files_and_resumes_to_identical_bytes(tmp_path, counted_encoding):
    reference = write_windows_dir(tmp_path / "reference")
    _extract(reference)
    full_calls = counted_encoding["calls"]
    paths = write_windows_dir(tmp_path / "crashed")
    counted_encoding.update(calls=0, fail_after=3)
    with pytest.raises(SimulatedCrash):
        _extract(paths)
    assert not paths.z.exists() and not paths.index.exists()
    counted_encoding.update(calls=0, fail_after=None)
    _extract(paths)
    # the one committed chunk (z and z_aug: it holds no test window for z_aug_heldout) was not redone
    assert counted_encoding["calls"] == full_calls - 2
    assert _bytes(paths) == _bytes(reference)


def test_a_changed_config_restarts_extraction_from_zero(tmp_path, counted_encoding):
    paths = write_windows_dir(tmp_path)
    counted_encoding.update(fail_after=4)
    with pytest.raises(SimulatedCrash):
        _extract(paths)
    counted_encoding.update(calls=0, fail_after=None)
    _extract(paths, "data.augment.noise_std=0.1")
    # 52 rows / 16 per chunk = 4 chunks, z and z_aug each; z_aug_heldout in the 2 chunks holding test windows
    assert counted_encoding["calls"] == 2 * 4 + 2


def test_qc_file_without_qc_pass_is_refused_naming_the_file(tmp_path):
    paths = write_windows_dir(tmp_path)
    io.write_parquet(paths.qc, pd.DataFrame({"window_id": np.arange(60)}))
    with pytest.raises(InputDataError, match=r"qc\.parquet: missing column\(s\) \['qc_pass'\]"):
        _extract(paths)


def _cli(paths: RunDir, *launcher: str) -> subprocess.Popen:
    args = [arg for setting in SETTINGS for arg in ("--set", setting)]
    return subprocess.Popen([sys.executable, *launcher, "-m", "stsae", "extract", "-q", "--run-dir",
                             str(paths.root), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen, timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-2000:]


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path):
    reference = write_windows_dir(tmp_path / "reference", n=120)
    _wait(_cli(reference))
    paths = write_windows_dir(tmp_path / "killed", n=120)
    proc = _cli(paths)
    progress = paths.embeddings_dir / ".extract-progress-r0of1.json"
    deadline = time.monotonic() + 300
    while not progress.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "extraction finished before it could be killed"
    assert not paths.z.exists()
    _wait(_cli(paths))
    assert _bytes(paths) == _bytes(reference)


@pytest.mark.slow
def test_two_rank_torchrun_writes_the_same_bytes_as_one_process(tmp_path):
    single = write_windows_dir(tmp_path / "single")
    _wait(_cli(single))
    sharded = write_windows_dir(tmp_path / "sharded")
    _wait(_cli(sharded, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))
    assert _bytes(sharded) == _bytes(single)
    assert not list(sharded.embeddings_dir.glob(".extract-*"))
