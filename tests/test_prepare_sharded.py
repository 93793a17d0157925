"""prepare under torchrun: two ranks write the same bytes and the same data-issue summary as one process."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as torch_dist

from stsae.config import load_config
from stsae.data.synthetic import iter_cohort
from stsae.pipeline.manifest import read_manifest
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.stages import prepare
from stsae.utils import io

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# 24 one-minute records of 6 windows, 5 records a chunk: 5 chunks, so the two ranks get 3 and 2 (uneven)
SYNTHETIC = ["data.synthetic.chunk_windows=30"]
FS = 125.0


def _outputs(paths: RunDir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (paths.windows, paths.meta, paths.qc, paths.splits)}


def _single(root: Path, settings: list[str]) -> RunDir:
    paths = RunDir(root)
    run_stages(StageContext(load_config(TINY, settings), paths, fingerprint=""), ["prepare"])
    return paths


def _torchrun(root: Path, settings: list[str], world: int = 2) -> RunDir:
    args = [arg for setting in settings for arg in ("--set", setting)]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(world), "-m", "stsae", "prepare", "-q", "--config", str(TINY), "--run-dir",
                           str(root), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return RunDir(root)


def _npz_cohort(path: Path) -> list[str]:
    """Seven 35 s records at 125 Hz, but record 3 has fs 0 (the loader skips it) and records 4 and 5 are
    at 10 Hz (too low for the band-pass: prepare skips them; they fall to different ranks)."""
    t = np.arange(int(35 * FS)) / FS
    rng = np.random.default_rng(0)
    ppg = np.stack([np.sin(2 * np.pi * (1 + 0.1 * i) * t) + 0.05 * rng.standard_normal(t.size) for i in range(7)])
    fs = np.array([FS, FS, FS, 0.0, 10.0, 10.0, FS])
    np.savez(path, ppg=ppg, fs=fs, patient_id=np.array([f"p{i}" for i in range(7)]))
    return ["data.source=npz", f"data.npz_path={path}"]


def test_iter_cohort_shards_are_the_full_sequence_dealt_round_robin():
    cfg = load_config(TINY, SYNTHETIC).data.synthetic
    full = [chunk.signals for chunk in iter_cohort(cfg, 0, 10.0)]
    dealt = [[chunk.signals for chunk in iter_cohort(cfg, 0, 10.0, shard=(r, 2))] for r in range(2)]
    assert len(full) == 5 and [len(d) for d in dealt] == [3, 2]
    for k, signals in enumerate(full):
        assert np.array_equal(dealt[k % 2][k // 2], signals, equal_nan=True)  # dropouts are NaN


def test_the_sharded_path_on_one_rank_writes_the_single_process_bytes(tmp_path):
    """The shard file, gather and unit-order copy, in-process (a one-rank gloo group)."""
    single = _single(tmp_path / "single", SYNTHETIC)
    paths = RunDir(tmp_path / "sharded")
    paths.windows_dir.mkdir(parents=True)
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        prepare._run_sharded(StageContext(load_config(TINY, SYNTHETIC), paths, fingerprint=""), 0, 1)
    finally:
        torch_dist.destroy_process_group()
    assert _outputs(paths) == _outputs(single)
    assert sorted(p.name for p in paths.windows_dir.iterdir()) == sorted(_outputs(single))  # no shard left


@pytest.mark.slow
def test_two_ranks_write_the_bytes_and_facts_of_one_process(tmp_path):
    single = _single(tmp_path / "single", SYNTHETIC)
    sharded = _torchrun(tmp_path / "sharded", SYNTHETIC)
    assert _outputs(sharded) == _outputs(single)
    assert read_manifest(sharded.manifest)["prepare"] == read_manifest(single.manifest)["prepare"]
    assert not [p.name for p in sharded.windows_dir.iterdir() if io.TEMP_MARK in p.name]


@pytest.mark.slow
def test_two_ranks_count_every_skipped_record_once(tmp_path):
    settings = _npz_cohort(tmp_path / "cohort.npz")
    single = _single(tmp_path / "single", settings)
    sharded = _torchrun(tmp_path / "sharded", settings)
    assert _outputs(sharded) == _outputs(single)
    issues = read_manifest(sharded.manifest)["prepare"]["data_issues"]
    assert issues == read_manifest(single.manifest)["prepare"]["data_issues"]
    assert issues["skipped"] == {"bad_sampling_rate": 1, "sampling_rate_too_low": 2}
