"""Train-batch gather from z.npy-shaped memmaps: throughput and resident memory, old vs new, in one run.

The train stage draws random batches of triplets (z_t, z_{t+1}, z_aug_t) from float32[M, 512] memmaps.
`memmap` is the old gather (fancy indexing through the mapping: every touched page, and its fault-around
neighbours, stays mapped); `pread` is `WindowTripletDataset.batch` today (`MemmapRows`: positioned reads
into a fresh array). Each variant runs in its own fresh interpreter over the same files, in alternating
rounds (median of rounds), after one sequential read that puts both files in the page cache, so disk
speed is out of the comparison. Reported per variant: rows/s (3 rows per triplet), peak RSS (VmHWM) and
RSS, anonymous RSS (RssAnon) and file-backed RSS (RssFile) after the last batch, all from
/proc/self/status, and each child's RSS before the first batch. Absolute rows/s depend on the machine
and its load; compare the ratio.
Output: benchmarks/results/bench_gather.json.

    .venv/bin/python benchmarks/bench_gather.py [--rows 1048576] [--steps 2000] [--rounds 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from stsae.data.dataset import WindowTripletDataset
from stsae.utils import io

D = 512
BATCH = 256
RECORD_WINDOWS = 40
VARIANTS = ("memmap", "pread")
STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def status_mib() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process in MiB (/proc/self/status)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in STATUS_FIELDS:
            values[key] = int(rest.split()[0]) / 1024
    return values


def write_embeddings(path: Path, rows: int, seed: int) -> None:
    """A float32[rows, 512] .npy filled with real (random) bytes, written in 64 MiB blocks."""
    io.preallocate_npy(path, (rows, D))
    array = np.load(path, mmap_mode="r+")
    step = (64 << 20) // (4 * D)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, step):
        array[start:start + step] = rng.standard_normal((min(step, rows - start), D), dtype=np.float32)
        array.flush()
        io.release_mapped_pages(array)
    del array


def read_through(path: Path) -> None:
    """Read the whole file once so both variants start from the same warm page cache."""
    with path.open("rb") as handle:
        while handle.read(64 << 20):
            pass


def old_memmap_batch(data: WindowTripletDataset, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """The gather `WindowTripletDataset.batch` did before MemmapRows: indexing the memmaps directly."""
    rows_t, rows_t1 = data.pairs[ids, 0], data.pairs[ids, 1]
    return (np.asarray(data.z[rows_t], dtype=np.float32), np.asarray(data.z[rows_t1], dtype=np.float32),
            np.asarray(data.z_aug[rows_t], dtype=np.float32))


def child(variant: str, directory: Path, steps: int) -> None:
    """Time `steps` random batches of BATCH triplets with one variant; print its JSON result."""
    z = np.load(directory / "z.npy", mmap_mode="r")
    z_aug = np.load(directory / "z_aug.npy", mmap_mode="r")
    n = z.shape[0]
    index = pd.DataFrame({"record_id": np.arange(n) // RECORD_WINDOWS, "segment_idx": np.arange(n) % RECORD_WINDOWS,
                          "split": np.full(n, "train")})
    data = WindowTripletDataset(z, z_aug, index, "train")
    gather = old_memmap_batch if variant == "memmap" else WindowTripletDataset.batch
    rng = np.random.default_rng(0)
    before = status_mib()
    started = time.perf_counter()
    checksum = 0.0
    for _ in range(steps):
        z_t, _, _ = gather(data, rng.integers(0, len(data), BATCH))
        checksum += float(z_t[0, 0])
    seconds = time.perf_counter() - started
    json.dump({"rows_per_s": 3 * BATCH * steps / seconds, "seconds": seconds, "checksum": checksum,
               "before_mib": before, "after_mib": status_mib()}, sys.stdout)


def run_child(variant: str, directory: Path, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, str(directory), str(steps)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1 << 20, help="rows of z.npy and z_aug.npy (2 GiB each at 2^20)")
    parser.add_argument("--steps", type=int, default=2000, help="batches of 256 triplets per child")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of both variants")
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary files go (default: $TMPDIR)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_gather.json"))
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "DIR", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        for seed, name in enumerate(("z.npy", "z_aug.npy")):
            write_embeddings(directory / name, args.rows, seed)
            read_through(directory / name)
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                runs[variant].append(run_child(variant, directory, args.steps))
    if len({r["checksum"] for rs in runs.values() for r in rs}) != 1:
        raise RuntimeError("the variants gathered different rows")
    summary = {v: {"rows_per_s": statistics.median(r["rows_per_s"] for r in rs),
                   "ms_per_batch": 1e3 * statistics.median(r["seconds"] for r in rs) / args.steps,
                   "peak_rss_mib": max(r["after_mib"]["VmHWM"] for r in rs),
                   "rss_after_mib": max(r["after_mib"]["VmRSS"] for r in rs),
                   "anon_rss_after_mib": max(r["after_mib"]["RssAnon"] for r in rs),
                   "file_rss_after_mib": max(r["after_mib"]["RssFile"] for r in rs),
                   "rss_before_mib": max(r["before_mib"]["VmRSS"] for r in rs)} for v, rs in runs.items()}
    result = {"rows": args.rows, "file_gib_each": args.rows * D * 4 / 2**30, "batch_triplets": BATCH,
              "steps": args.steps, "rounds": args.rounds, "load_average_1min_before": load_before,
              "load_average_1min_after": os.getloadavg()[0], "variants": summary, "runs": runs,
              "pread_over_memmap_rows_per_s": summary["pread"]["rows_per_s"] / summary["memmap"]["rows_per_s"]}
    for variant, row in summary.items():
        print(f"{variant:6s}: {row['rows_per_s']:9.0f} rows/s ({row['ms_per_batch']:.2f} ms/batch), "
              f"peak RSS {row['peak_rss_mib']:7.1f} MiB "
              f"(before gathering {row['rss_before_mib']:.1f}; after: anon {row['anon_rss_after_mib']:.1f}, "
              f"file {row['file_rss_after_mib']:.1f})")
    print(f"pread / memmap throughput: x{result['pread_over_memmap_rows_per_s']:.2f}")
    io.write_json(args.out, result)


if __name__ == "__main__":
    main()
