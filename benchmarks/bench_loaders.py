"""Peak RSS of the real-data loaders on N vs 10×N fixture records: memory must not grow with record count.

Each measurement runs in its own subprocess (a fresh interpreter, so peak RSS is that load's alone),
which streams every record through `iter_source_records` and reports ru_maxrss. Fixtures are written
in the real formats by tests/realformat_fixtures.py. Output: benchmarks/results/bench_loaders.json.

    .venv/bin/python benchmarks/bench_loaders.py [--n 20] [--minutes 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from peak_memory import own_peak_rss_mib  # noqa: E402
from realformat_fixtures import (  # noqa: E402
    Channel,
    PulseSegment,
    PulseSubject,
    mimic_iii_record_dir,
    mimic_iii_record_name,
    pulse_signal,
    write_multisegment_record,
    write_pulsedb_subject,
)
from stsae.config import DataSection  # noqa: E402
from stsae.utils.io import write_json  # noqa: E402

START = datetime(2150, 1, 1, 8, 0)


def write_mimic_iii(root: Path, n_records: int, minutes: float) -> None:
    """n_records MIMIC-III matched records of `minutes` of 125 Hz PLETH, two segments and a gap each."""
    half = int(minutes * 60 * 125 / 2)
    rng = np.random.default_rng(0)
    for subject in range(1, n_records + 1):
        pieces = [("0001", [Channel("PLETH", rng.integers(-100, 100, half))]), ("~", 125),
                  ("0002", [Channel("PLETH", rng.integers(-100, 100, half))])]
        write_multisegment_record(mimic_iii_record_dir(root, subject), mimic_iii_record_name(subject, START),
                                  125.0, pieces, START, layout_prefix=f"{3000000 + subject}")


def write_pulsedb(root: Path, n_subjects: int, minutes: float) -> None:
    """n_subjects PulseDB subject files of `minutes` of consecutive 10 s segments each."""
    for i in range(n_subjects):
        segments = [PulseSegment("1", k + 1, pulse_signal(k)) for k in range(int(minutes * 6))]
        subject = PulseSubject(f"p{i:06d}", 60.0, "M", segments)
        write_pulsedb_subject(root / "Segment_Files" / "PulseDB_MIMIC" / f"p{i:06d}.mat", subject)


def child(source: str, root: str) -> None:
    """Stream every record of one fixture tree; print records, samples and peak RSS as JSON."""
    from stsae.data.sources import iter_source_records

    cfg = DataSection(source=source, **{f"{source}_root": Path(root)})
    started = time.perf_counter()
    n_records = n_samples = 0
    for record in iter_source_records(cfg):
        n_records += 1
        n_samples += record.signal.size
    json.dump({"records": n_records, "samples": n_samples, "peak_rss_mib": own_peak_rss_mib(),
               "seconds": time.perf_counter() - started}, sys.stdout)


def measure(source: str, root: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", source, str(root)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20, help="records (subjects) in the small tree")
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of PPG per record")
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results: dict[str, object] = {
        "n_small": args.n, "n_large": 10 * args.n, "minutes_per_record": args.minutes,
    }
    writers = {"mimic_iii": write_mimic_iii, "pulsedb": write_pulsedb}
    with tempfile.TemporaryDirectory() as tmp:
        for source, writer in writers.items():
            small, large = Path(tmp) / f"{source}_small", Path(tmp) / f"{source}_large"
            writer(small, args.n, args.minutes)
            writer(large, 10 * args.n, args.minutes)
            run_small, run_large = measure(source, small), measure(source, large)
            ratio = run_large["peak_rss_mib"] / run_small["peak_rss_mib"]
            results[source] = {
                "small": run_small, "large": run_large, "peak_rss_ratio_large_over_small": ratio,
            }
            print(f"{source}: {run_small['records']} → {run_large['records']} records, peak RSS "
                  f"{run_small['peak_rss_mib']:.1f} → {run_large['peak_rss_mib']:.1f} MiB "
                  f"(ratio {ratio:.3f}); {run_large['samples'] / run_large['seconds'] / 1e6:.2f} M samples/s")
    write_json(HERE / "results" / "bench_loaders.json", results)


if __name__ == "__main__":
    main()
