"""WindowTripletDataset.batch on memmaps: the memmap's bytes, read without keeping the file's pages mapped."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stsae.data.dataset import MemmapRows, WindowTripletDataset, read_rows
from stsae.errors import InputDataError

D = 512


def _npy(path: Path, array: np.ndarray) -> np.ndarray:
    np.save(path, array)
    return np.load(path, mmap_mode="r")


def _index(n: int, record_len: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"record_id": (np.arange(n) // record_len).astype(str),
                         "segment_idx": np.arange(n) % record_len,
                         "split": np.where(np.arange(n) % 40 < 30, "train", "val")})


def _arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, D), dtype=np.float32),
            rng.standard_normal((n, D), dtype=np.float32))


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping header: range perms offset dev inode [path]
            inside = len(fields) >= 6 and fields[5] == str(path)
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def test_memmap_batches_equal_in_memory_batches_bit_for_bit(tmp_path):
    z, z_aug = _arrays(400)
    in_memory = WindowTripletDataset(z, z_aug, _index(400))
    ids = np.r_[np.random.default_rng(1).integers(0, len(in_memory), 300), 5, 5, 0, len(in_memory) - 1]
    for limit in (0, z.nbytes):  # positioned reads per batch; the whole (small) file read once
        mapped = WindowTripletDataset(_npy(tmp_path / "z.npy", z), _npy(tmp_path / "z_aug.npy", z_aug),
                                      _index(400), in_memory_max_bytes=limit)
        for expected, got in zip(in_memory.batch(ids), mapped.batch(ids), strict=True):
            assert got.dtype == expected.dtype and got.shape == (ids.size, D)
            assert got.numpy().tobytes() == expected.numpy().tobytes()


def test_random_batches_leave_no_page_of_the_file_resident(tmp_path):
    if not Path("/proc/self/smaps").is_file():
        pytest.skip("needs Linux /proc/self/smaps")
    z, z_aug = _arrays(4000)  # 8 MiB each
    paths = tmp_path / "z.npy", tmp_path / "z_aug.npy"
    dataset = WindowTripletDataset(_npy(paths[0], z), _npy(paths[1], z_aug), _index(4000), in_memory_max_bytes=0)
    rng = np.random.default_rng(2)
    for _ in range(50):
        dataset.batch(rng.integers(0, len(dataset), 256))
    assert _mapped_rss_kib(paths[0]) + _mapped_rss_kib(paths[1]) == 0
    np.asarray(dataset.z[rng.integers(0, 4000, 256)])  # the old gather: fancy indexing through the mapping
    assert _mapped_rss_kib(paths[0]) > 256 * 2  # so the measurement above can see mapped pages


def test_read_rows_of_a_small_memmap_reads_only_those_rows_with_the_same_bytes(tmp_path, monkeypatch):
    """A one-off subsample (baselines, ground) of a file under the in-memory limit: the rows' bytes, via
    positioned reads, so neither the mapping's pages nor a whole-file copy stay in the process."""
    if not Path("/proc/self/smaps").is_file():
        pytest.skip("needs Linux /proc/self/smaps")
    z, _ = _arrays(4000)  # 8 MiB, far under IN_MEMORY_MAX_BYTES
    mapped = _npy(tmp_path / "z.npy", z)
    rows = np.random.default_rng(3).integers(0, 4000, 300)
    monkeypatch.setattr(MemmapRows, "read_all", lambda self: pytest.fail("read the whole file"))
    got = read_rows(mapped, rows)
    assert got.tobytes() == z[rows].tobytes()
    assert _mapped_rss_kib(tmp_path / "z.npy") == 0
    assert read_rows(z, rows).tobytes() == z[rows].tobytes()  # an in-memory array: plain indexing


def test_a_slice_of_a_memmap_is_gathered_by_indexing(tmp_path):
    z, z_aug = _arrays(200)
    full = _npy(tmp_path / "z.npy", z)
    assert MemmapRows.applies(full) and not MemmapRows.applies(full[50:])
    dataset = WindowTripletDataset(full[50:], z_aug[50:], _index(150))
    ids = np.arange(len(dataset))
    assert np.array_equal(dataset.batch(ids)[0].numpy(), z[50:][dataset.pairs[ids, 0]])


def test_rows_outside_the_file_are_an_index_error(tmp_path):
    reader = MemmapRows(_npy(tmp_path / "z.npy", _arrays(10)[0]))
    with pytest.raises(IndexError, match=r"z\.npy"):
        reader.read(np.array([3, 10]))
    assert reader.read(np.array([], dtype=np.int64)).shape == (0, D)


def test_a_file_truncated_after_opening_is_named(tmp_path):
    path = tmp_path / "z.npy"
    reader = MemmapRows(_npy(path, _arrays(10)[0]))
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 4 * D)
    assert reader.read(np.array([0, 8])).shape == (2, D)
    with pytest.raises(InputDataError, match=r"z\.npy: ends before row 9"):
        reader.read(np.array([9]))
