"""PaPaGei-S extraction speed and memory: plain fp32 eager vs the stage's fast path, in one run.

Every variant is timed in interleaved rounds over the same windows (median of rounds), so a shared,
loaded CPU slows all variants alike and the ratios stay meaningful; absolute windows/s are not.
Variants: eager upstream graph, the channels-last FastEmbedder, and FastEmbedder under torch.compile
(Inductor, frozen weights; its compile time is reported separately). Reports: windows/s per variant,
fastest/baseline ratio, achieved GFLOP/s (FLOPs counted with
torch.utils.flop_counter) against this machine's measured fp32 GEMM GFLOP/s, and the extract stage's
peak RSS at two dataset sizes 10x apart (each in a fresh subprocess).
Output: benchmarks/results/bench_extract.json.

    .venv/bin/python benchmarks/bench_extract.py [--windows 128] [--rounds 3] [--rss-small 60]
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from peak_memory import own_peak_rss_mib  # noqa: E402
from stsae.config import load_config  # noqa: E402
from stsae.models.encoder_runtime import CompiledEmbedder, FastEmbedder, native_bf16  # noqa: E402
from stsae.models.papagei import embed_batches, encode, random_papagei_s  # noqa: E402
from stsae.pipeline.runner import StageContext, run_stages  # noqa: E402
from stsae.rundir import RunDir  # noqa: E402
from stsae.utils.io import write_json  # noqa: E402
from test_extract import write_windows_dir  # noqa: E402


def gflop_per_window(model: torch.nn.Module) -> float:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, 1250))
    return counter.get_total_flops() / 1e9


def gemm_gflops(threads: int, size: int = 1024, reps: int = 10) -> float:
    """Best-of-reps fp32 GEMM rate: the machine's practical compute ceiling for this run."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def time_variants(variants: dict[str, tuple[int, Callable[[], object]]], rounds: int) -> dict[str, float]:
    """Median seconds per variant over interleaved rounds (one warm-up call each first)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for threads, fn in variants.values():
        torch.set_num_threads(threads)
        fn()
    for _ in range(rounds):
        for name, (threads, fn) in variants.items():
            torch.set_num_threads(threads)
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def child(run_dir: str, chunk_rows: int) -> None:
    """Run the extract stage in this fresh process; print its peak RSS (MiB) and rows as JSON."""
    config = load_config(None, ["encoder.allow_random_weights=true", f"extract.chunk_rows={chunk_rows}",
                                "extract.batch_size=64", "extract.precision=fp32"])
    started = time.perf_counter()
    run_stages(StageContext(config, RunDir(Path(run_dir)), fingerprint=""), ["extract"])
    rows = int(np.load(RunDir(Path(run_dir)).z, mmap_mode="r").shape[0])
    json.dump({"rows": rows, "seconds": time.perf_counter() - started,
               "peak_rss_mib": own_peak_rss_mib()}, sys.stdout)


def measure_rss(root: Path, n_windows: int, chunk_rows: int) -> dict[str, float]:
    write_windows_dir(root, n=n_windows)
    out = subprocess.run([sys.executable, __file__, "--child", str(root), str(chunk_rows)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=128, help="windows encoded per variant per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--rss-small", type=int, default=60, help="windows of the small RSS run (large: 10x)")
    parser.add_argument("--child", nargs=2, metavar=("RUN_DIR", "CHUNK_ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    model = random_papagei_s(0)
    fast = FastEmbedder(model)
    windows = np.random.default_rng(0).standard_normal((args.windows, 1250)).astype(np.float32)
    variants: dict[str, tuple[int, Callable[[], object]]] = {
        f"fp32_eager_b256_t{cores}": (cores, lambda: encode(model, windows, batch_size=256)),
    }
    thread_options = sorted({1, cores})
    for threads in thread_options:
        variants[f"fp32_eager_b64_t{threads}"] = (threads, lambda: encode(model, windows, batch_size=64))
        for batch in (32, 64, 128, 256):
            variants[f"fast_fp32_b{batch}_t{threads}"] = (
                threads, lambda batch=batch: embed_batches(fast, windows, batch, "fp32"))
    if native_bf16():
        variants[f"fast_bf16_b64_t{cores}"] = (cores, lambda: embed_batches(fast, windows, 64, "bf16"))
    torch.set_num_threads(cores)
    compiled = CompiledEmbedder(fast, 128)
    started = time.perf_counter()
    compiled_z = embed_batches(compiled, windows, 128, "fp32")
    compile_seconds = time.perf_counter() - started
    compiled_max_abs_diff = float(np.abs(compiled_z - embed_batches(fast, windows, 128, "fp32")).max())
    variants[f"compiled_fp32_b128_t{cores}"] = (cores, lambda: embed_batches(compiled, windows, 128, "fp32"))
    seconds = time_variants(variants, args.rounds)
    rate = {name: args.windows / s for name, s in seconds.items()}
    baseline = f"fp32_eager_b256_t{cores}"
    fastest = max(rate, key=rate.__getitem__)
    same_threads = {t: max((n for n in rate if not n.startswith("fp32") and n.endswith(f"_t{t}")), key=rate.get)
                    for t in thread_options}
    flops = gflop_per_window(model)
    gemm = {f"t{t}": gemm_gflops(t) for t in thread_options}
    with tempfile.TemporaryDirectory() as tmp:
        small = measure_rss(Path(tmp) / "small", args.rss_small, chunk_rows=32)
        large = measure_rss(Path(tmp) / "large", 10 * args.rss_small, chunk_rows=32)
    results = {
        "cores": cores, "load_avg_1min_before": load_before, "load_avg_1min_after": os.getloadavg()[0],
        "native_bf16": native_bf16(), "torch": torch.__version__, "windows_per_round": args.windows,
        "rounds": args.rounds, "windows_per_s": rate, "baseline": baseline, "fastest": fastest,
        "speedup_fastest_over_baseline": rate[fastest] / rate[baseline],
        "speedup_fast_path_at_equal_threads": {
            f"t{t}": rate[same_threads[t]] / rate[f"fp32_eager_b64_t{t}"] for t in thread_options},
        "compile_seconds": compile_seconds, "compiled_max_abs_diff_vs_fast": compiled_max_abs_diff,
        "gflop_per_window": flops,
        "achieved_gflops": {"baseline": rate[baseline] * flops, "fastest": rate[fastest] * flops},
        "gemm_fp32_gflops": gemm,
        "rss": {"small": small, "large": large,
                "peak_rss_ratio_large_over_small": large["peak_rss_mib"] / small["peak_rss_mib"]},
    }
    for name, value in sorted(rate.items(), key=lambda item: -item[1]):
        print(f"{name:>24}: {value:8.1f} windows/s")
    print(f"fastest {fastest} / baseline {baseline}: {results['speedup_fastest_over_baseline']:.2f}x; "
          f"fast path vs eager at equal threads: "
          + ", ".join(f"{k} {v:.2f}x" for k, v in results["speedup_fast_path_at_equal_threads"].items()))
    print(f"torch.compile (frozen) took {compile_seconds:.1f} s; max |compiled - fast| {compiled_max_abs_diff:.2e}")
    print(f"{flops:.4f} GFLOP/window -> {rate[fastest] * flops:.1f} GFLOP/s achieved vs fp32 GEMM "
          + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items()) + " GFLOP/s")
    print(f"extract peak RSS: {small['rows']} rows {small['peak_rss_mib']:.0f} MiB, {large['rows']} rows "
          f"{large['peak_rss_mib']:.0f} MiB (ratio {results['rss']['peak_rss_ratio_large_over_small']:.2f}); "
          f"load avg {load_before:.1f} -> {results['load_avg_1min_after']:.1f} on {cores} cores")
    write_json(HERE / "results" / "bench_extract.json", results)


if __name__ == "__main__":
    main()
