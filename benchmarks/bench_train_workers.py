"""Is `train.workers` worth it? The train stage (`stsae.stages.train.run`, forced, so every model trains)
with one process on all cores, one process on one thread, and N local workers, in paired rounds whose
arm order rotates, on a run directory that already holds the config's embeddings. Medians per arm, with
the load average before each run (other jobs on a shared machine slow multi-threaded arms the most).
Output: benchmarks/results/bench_train_workers.json.

    .venv/bin/stsae extract --config configs/demo.yaml --run-dir /tmp/demo
    .venv/bin/python benchmarks/bench_train_workers.py --run-dir /tmp/demo [--rounds 3] [--set train.steps=150]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from stsae.config import load_config
from stsae.models.encoder_runtime import usable_cores
from stsae.pipeline.contract import StageContext
from stsae.rundir import RunDir
from stsae.stages import train as train_stage
from stsae.utils import io

RESULTS = Path(__file__).resolve().parent / "results" / "bench_train_workers.json"


def _arms(workers: int) -> dict[str, tuple[int, int]]:
    """name -> (train.workers, torch threads of the main process)."""
    cores = usable_cores()
    return {f"1 process, {cores} threads": (1, cores), "1 process, 1 thread": (1, 1),
            f"{workers} workers": (workers, cores)}


def _time_arm(run_dir: RunDir, config_path: Path, overrides: list[str], workers: int, threads: int) -> float:
    config = load_config(config_path, [*overrides, f"train.workers={workers}"])
    ctx = StageContext(config, run_dir, fingerprint="bench", force=True, upstream={"extract": "bench"})
    torch.set_num_threads(threads)
    started = time.perf_counter()
    train_stage.run(ctx)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.disable(logging.INFO)
    arms = _arms(args.workers)
    names = list(arms)
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            load = os.getloadavg()[0]
            seconds = _time_arm(RunDir(args.run_dir), args.config, args.overrides, *arms[name])
            runs.append({"round": round_, "arm": name, "seconds": round(seconds, 2), "load_before": load})
            print(json.dumps(runs[-1]), flush=True)
    medians = {name: statistics.median(r["seconds"] for r in runs if r["arm"] == name) for name in names}
    io.write_json(RESULTS, {"config": str(args.config), "overrides": args.overrides, "cores": usable_cores(),
                            "median_seconds": medians, "runs": runs})
    print(json.dumps(medians, indent=1))


if __name__ == "__main__":
    main()
