"""Atomic writes: a writer killed mid-write leaves the old file intact and no stray temp file."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.utils import io


def test_write_json_replaces_content_and_maps_nan_to_null(tmp_path):
    path = tmp_path / "a.json"
    io.write_json(path, {"x": 1})
    io.write_json(path, {"x": float("nan"), "arr": np.arange(2)})
    assert path.read_text().split() == ['{', '"x":', 'null,', '"arr":', '[', '0,', '1', ']', '}']


def test_exception_inside_block_keeps_old_file(tmp_path):
    path = tmp_path / "a.txt"
    io.write_text(path, "old")
    with pytest.raises(RuntimeError), io.atomic_open(path) as handle:
        handle.write("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_writer_killed_mid_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "big.npy"
    io.save_npy(path, np.zeros(3, dtype=np.float32))
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import time
        from stsae.utils import io
        with io.atomic_open({str(path)!r}, "wb") as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.05)
    assert path.read_bytes() == before
    np.testing.assert_array_equal(np.load(path), np.zeros(3, dtype=np.float32))


def test_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    io.write_parquet(tmp_path / "f.parquet", frame)
    pd.testing.assert_frame_equal(io.read_parquet(tmp_path / "f.parquet"), frame)


def test_missing_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"z.npy: missing \(run the stage that writes it first\)"):
        io.open_memmap_rows(tmp_path / "z.npy")


def test_memmap_with_wrong_width_names_the_file(tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((4, 10), dtype=np.float32))
    with pytest.raises(ValueError, match=r"z.npy: expected 512 columns, got 10"):
        io.open_memmap_rows(tmp_path / "z.npy", 512)


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.needs(os.path.exists("/proc/self/status"), "needs Linux /proc to read RssFile")
def test_released_memmap_pages_leave_rss_and_keep_their_data(tmp_path):
    path = tmp_path / "big.npy"
    io.save_npy(path, np.arange(8 * 2**20, dtype=np.float32).reshape(-1, 1024))  # 32 MiB
    writable = np.load(path, mmap_mode="r+")
    writable[:] += 1
    writable.flush()
    touched = _rss_file_kib()
    io.release_mapped_pages(writable)
    assert touched - _rss_file_kib() > 24 * 1024  # most of the 32 MiB left this process's RSS
    reopened = np.load(path, mmap_mode="r")
    assert reopened[0, 0] == 1 and reopened[-1, -1] == 8 * 2**20
    io.release_mapped_pages(np.zeros(3))  # a plain array: nothing to release, no error
