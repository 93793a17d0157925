"""Scale run: prepare → extract → one ST-SAE (K=4096) → evaluate on a synthetic cohort of N windows, and
the same at N/10 in the same benchmark, to check that time grows linearly and memory does not.

Each stage runs as `python -m stsae <stage>` in its own process; its wall time and the peak RSS of its
process tree (psutil polling every 0.1 s) are recorded. Per stage: seconds, windows/s, peak RSS (flagged
at >= 4 GiB) and the scaling exponent log(t_N / t_small) / log(N / N_small) (1.0 = linear; train runs a
fixed number of steps, so its time should stay flat). Output: benchmarks/results/bench_scale.json.

    .venv/bin/python benchmarks/bench_scale.py [--windows 1000000] [--steps 200] [--small-ratio 10]
                                               [--prepare-ranks 2]

With --prepare-ranks N > 1, prepare runs under `torchrun --standalone --nproc-per-node N` (sharded by
work unit); its peak RSS is then the sum over the launcher and every rank.

The default 1M-window run (with its 100k comparison) took 1 h 45 min on the 2-core box
(`make bench-scale`); `--windows 2000` is a quick smoke test. `--large-only --all-stages --work-dir DIR` runs every
pipeline stage on the large cohort only, resuming from whatever stages DIR already holds (e.g. a
sharded prepare). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from stsae.utils.io import write_json

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ("prepare", "extract", "train", "evaluate")
ALL_STAGES = ("prepare", "extract", "train", "baselines", "evaluate", "age", "ground", "figures", "report")
RSS_FLAG_BYTES = 4 * 2**30
WINDOWS_PER_PATIENT = 60  # 2 records x 5 min of 10 s windows


def overrides(n_windows: int, steps: int) -> list[str]:
    """Config overrides (on configs/demo.yaml) for a cohort of about n_windows and one K=4096 ST-SAE."""
    n_patients = max(10, math.ceil(n_windows / WINDOWS_PER_PATIENT))
    settings = {
        "run.name": f"scale-{n_windows}", "data.synthetic.n_patients": n_patients,
        "data.synthetic.records_per_patient": 2, "data.synthetic.minutes_per_record": 5.0,
        "train.d_dict": 4096, "train.k": 16, "train.steps": steps, "train.seeds": "[0]",
        "train.ablations": "[]", "train.d_dict_sweep": "[]", "train.checkpoint_every": max(1, steps // 2),
        "train.eval_every": max(1, steps // 2), "eval.stability_subsamples": 0,
        # Both sizes take the compiled encoder path (auto would compile only the larger one), so the
        # scaling exponent compares like with like; compilation is a fixed 18-50 s per run.
        "extract.compile": "true",
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, anonymous RSS) of a process tree. RSS counts the resident pages of memory-mapped files too
    (page cache the kernel may drop at will, growing with the windows/z files a stage streams through);
    anonymous RSS (RSS minus file-backed and shared pages) is the memory the stage actually holds."""
    total = anonymous = 0
    for member in (proc, *proc.children(recursive=True)):
        try:
            info = member.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += info.rss
        anonymous += info.rss - info.shared
    return total, anonymous


def run_stage(stage: str, run_dir: Path, sets: list[str], ranks: int = 1) -> dict[str, Any]:
    """Run one stage in a fresh process (under torchrun with `ranks` > 1); returns seconds and peak RSS
    of its process tree."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    command = [sys.executable, *launcher, "-m", "stsae", stage, "-q", "--config",
               str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), *sets]
    started = time.perf_counter()
    popen = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = psutil.Process(popen.pid)
    peak = peak_anonymous = 0
    while popen.poll() is None:
        try:
            rss, anonymous = _tree_rss(proc)
        except psutil.NoSuchProcess:
            break
        peak, peak_anonymous = max(peak, rss), max(peak_anonymous, anonymous)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    stderr = popen.stderr.read() if popen.stderr else ""
    if popen.returncode != 0:
        raise SystemExit(f"stage {stage} failed ({popen.returncode}): {stderr.strip()[-2000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_bytes": peak, "peak_rss_gib": round(peak / 2**30, 3),
            "peak_anonymous_rss_gib": round(peak_anonymous / 2**30, 3), "rss_over_4gib": peak >= RSS_FLAG_BYTES}


def scale_run(n_windows: int, steps: int, work: Path, prepare_ranks: int = 1,
              stage_names: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Every stage at one cohort size; windows/s uses the windows prepare actually wrote. A stage whose
    outputs already stand in the run directory with the same inputs is reused by the pipeline itself
    (its time is then the provenance check), so a `--work-dir` that holds an earlier prepare resumes."""
    run_dir = work / f"n{n_windows}"
    sets = overrides(n_windows, steps)
    stages: dict[str, Any] = {}
    for stage in stage_names:
        stages[stage] = run_stage(stage, run_dir, sets, prepare_ranks if stage == "prepare" else 1)
        print(f"  N={n_windows:>9}: {stage:<9} {stages[stage]['seconds']:>9.1f} s  "
              f"peak RSS {stages[stage]['peak_rss_gib']:.2f} GiB "
              f"(anonymous {stages[stage]['peak_anonymous_rss_gib']:.2f} GiB)", flush=True)
    written = int(np.load(run_dir / "windows" / "windows.npy", mmap_mode="r").shape[0])
    for result in stages.values():
        result["windows_per_s"] = round(written / max(result["seconds"], 1e-9), 1)
    return {"windows": written, "stages": stages}


def _machine() -> dict[str, Any]:
    return {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1_000_000, help="Windows in the large cohort.")
    parser.add_argument("--small-ratio", type=int, default=10, help="The small cohort is N / this.")
    parser.add_argument("--steps", type=int, default=200, help="ST-SAE training steps (same at both sizes).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Where run directories go (temp dir).")
    parser.add_argument("--prepare-ranks", type=int, default=1, help="torchrun ranks of the prepare stage.")
    parser.add_argument("--large-only", action="store_true",
                        help="Run only the large cohort (no small comparison, no scaling exponents).")
    parser.add_argument("--all-stages", action="store_true",
                        help="Run every pipeline stage, not only prepare/extract/train/evaluate.")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_scale.json")
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="stsae-scale-"))
    if args.large_only:
        try:
            large = scale_run(args.windows, args.steps, work, args.prepare_ranks,
                              ALL_STAGES if args.all_stages else STAGES)
        finally:
            if args.work_dir is None:
                shutil.rmtree(work, ignore_errors=True)
        flagged = [stage for stage, r in large["stages"].items() if r["rss_over_4gib"]]
        write_json(args.out, {"machine": _machine(), "steps": args.steps, "prepare_ranks": args.prepare_ranks,
                              "d_dict": 4096, "large": large, "rss_over_4gib": flagged})
        print(f"RSS >= 4 GiB: {flagged or 'none'}; wrote {args.out}")
        return
    try:
        small = scale_run(max(WINDOWS_PER_PATIENT * 10, args.windows // args.small_ratio), args.steps, work,
                          args.prepare_ranks)
        large = scale_run(args.windows, args.steps, work, args.prepare_ranks)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    size_ratio = large["windows"] / small["windows"]
    seconds = {name: {stage: max(res["stages"][stage]["seconds"], 1e-9) for stage in STAGES}
               for name, res in (("small", small), ("large", large))}
    scaling = {stage: round(math.log(seconds["large"][stage] / seconds["small"][stage])
                            / math.log(size_ratio), 3) for stage in STAGES}
    rss_ratio = {stage: round(large["stages"][stage]["peak_rss_bytes"]
                              / max(small["stages"][stage]["peak_rss_bytes"], 1), 3) for stage in STAGES}
    anonymous_ratio = {stage: round(large["stages"][stage]["peak_anonymous_rss_gib"]
                                    / max(small["stages"][stage]["peak_anonymous_rss_gib"], 1e-9), 3)
                       for stage in STAGES}
    flagged = [f"{size}:{stage}" for size, res in (("large", large), ("small", small))
               for stage, r in res["stages"].items() if r["rss_over_4gib"]]
    result = {"machine": _machine(),
              "steps": args.steps, "prepare_ranks": args.prepare_ranks, "d_dict": 4096, "small": small,
              "large": large, "size_ratio": size_ratio,
              "time_scaling_exponent": scaling, "peak_rss_ratio": rss_ratio,
              "peak_anonymous_rss_ratio": anonymous_ratio, "rss_over_4gib": flagged,
              "note": "exponent 1.0 = time linear in windows; train runs fixed steps (expect ~0)."}
    write_json(args.out, result)
    print(f"size ratio {size_ratio:.1f}; time scaling exponent per stage {scaling}")
    print(f"peak RSS ratio large/small {rss_ratio}; anonymous {anonymous_ratio}; RSS >= 4 GiB: {flagged or 'none'}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
