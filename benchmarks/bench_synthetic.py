"""Synthetic-cohort generation: windows per second and peak RSS at two cohort sizes 10x apart.

Each size runs in its own subprocess so its peak RSS is its own. Prints the ratios measured in this run
and writes benchmarks/results/bench_synthetic.json. Usage:
    .venv/bin/python benchmarks/bench_synthetic.py [--small 10000] [--chunk-windows 4096]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import own_peak_rss_mib

RESULTS = Path(__file__).resolve().parent / "results" / "bench_synthetic.json"


def _child(n_windows: int, chunk_windows: int, with_windowing: bool) -> dict[str, float]:
    """Generate about n_windows windows (2-min records, 2 per patient) and report time and memory."""
    from stsae.config import QCSection, SyntheticSection, WindowingSection
    from stsae.data.synthetic import iter_cohort, windows_per_record
    from stsae.data.windowing import signal_quality_mask, window_signals

    base = SyntheticSection(chunk_windows=chunk_windows)
    per_patient = base.records_per_patient * windows_per_record(base, 10.0)
    cfg = base.model_copy(update={"n_patients": max(1, n_windows // per_patient)})
    rss_before = own_peak_rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    produced = 0
    for chunk in iter_cohort(cfg, 0, 10.0):
        if with_windowing:
            out = window_signals(chunk.signals, chunk.fs, WindowingSection())
            signal_quality_mask(out.raw, chunk.fs, **QCSection().model_dump())
        produced += chunk.signals.shape[0] * windows_per_record(cfg, 10.0)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {"windows": produced, "seconds": wall, "cpu_seconds": cpu, "windows_per_s": produced / wall,
            "rss_after_import_mb": rss_before,
            "peak_rss_mb": own_peak_rss_mib()}


def _run_child(n_windows: int, chunk_windows: int, with_windowing: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", str(n_windows), "--chunk-windows", str(chunk_windows)]
    if with_windowing:
        cmd.append("--with-windowing")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="windows in the small cohort (large = 10x)")
    parser.add_argument("--chunk-windows", type=int, default=4096)
    parser.add_argument("--with-windowing", action="store_true", help="also band-pass, window and QC")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(args.child, args.chunk_windows, args.with_windowing)))
        return
    results = {}
    for label, size in (("small", args.small), ("large", 10 * args.small)):
        results[label] = _run_child(size, args.chunk_windows, args.with_windowing)
        r = results[label]
        print(f"{label:5s}: {r['windows']:>8d} windows in {r['seconds']:6.1f} s wall"
              f" ({r['cpu_seconds']:.1f} s CPU) = {r['windows_per_s']:8.0f} windows/s,"
              f" peak RSS {r['peak_rss_mb']:.0f} MB (after imports {r['rss_after_import_mb']:.0f} MB)")
    small, large = results["small"], results["large"]
    ratios = {
        "throughput_large_over_small": large["windows_per_s"] / small["windows_per_s"],
        "peak_rss_large_over_small": large["peak_rss_mb"] / small["peak_rss_mb"],
        "rss_growth_large_over_small": (large["peak_rss_mb"] - large["rss_after_import_mb"])
        / max(small["peak_rss_mb"] - small["rss_after_import_mb"], 1e-9),
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    from stsae.utils.io import write_json

    write_json(RESULTS, {"chunk_windows": args.chunk_windows, "with_windowing": args.with_windowing,
                         "results": results, "ratios": ratios})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
