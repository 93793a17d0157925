"""What `stsae run` costs when every stage is up to date, on a run directory the size of a 1M-window run.

Every stage is replaced by one that writes sparse files of the real sizes (windows.npy 5 GB, z.npy and
z_aug.npy 2 GB each, 30 models, 40 figures, ...), run once so each stage.json records its outputs, then
the whole pipeline is run again and timed: that second pass is pure provenance checking (fingerprints,
stat + sampled hash of every output, cached weights sha256). Sparse files cost no disk; their holes read
like page-cached data, so the number is the CPU cost; a cold disk adds reading about 4 MiB per large file.
Output: benchmarks/results/bench_freshness.json.

    .venv/bin/python benchmarks/bench_freshness.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from stsae.config import load_config
from stsae.pipeline import runner
from stsae.rundir import RunDir

GB = 1 << 30
MB = 1 << 20
SIZES: dict[str, dict[str, int]] = {
    "prepare": {"windows.npy": 5 * GB, "meta.parquet": 60 * MB, "qc.parquet": 8 * MB, "splits.parquet": MB},
    "extract": {"z.npy": 2 * GB, "z_aug.npy": 2 * GB, "index.parquet": 30 * MB},
    "train": {f"stsae-m{i}-K4096-s0.safetensors": 17 * MB for i in range(30)},
    "baselines": {f"pca-n{i}.joblib": 9 * MB for i in range(12)},
    "evaluate": {"leaderboard.json": MB, "pareto.json": 64 << 10},
    "age": {"predictions.parquet": MB, "delta_age.parquet": MB, "age_model.json": 1 << 17},
    "ground": {"concept_pulses.npz": 4 * MB, "morphology.parquet": 40 * MB},
    "figures": {f"fig{i}.png": 300 << 10 for i in range(40)},
    "report": {},
}


def _sparse_stage(stage: runner.StageContract) -> runner.StageEntry:
    def run(ctx: runner.StageContext) -> None:
        out = ctx.run_dir.root / stage.out_dir
        out.mkdir(parents=True, exist_ok=True)
        for name, size in SIZES[stage.name].items():
            with open(out / name, "wb") as handle:
                handle.write(b"\x01" * 4096)
                handle.truncate(size)
        if stage.name == "report":
            ctx.run_dir.report_html.write_bytes(b"x" * (8 * MB))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runner._entry = _sparse_stage  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "papagei_s.pt"
        weights.write_bytes(b"\x02" * (23 * MB))
        config = load_config(None, [f"encoder.weights={weights}"])
        run_dir = RunDir(Path(tmp) / "run")
        names = [stage.name for stage in runner.STAGES]
        t0 = time.perf_counter()
        runner.run_stages(runner.StageContext(config, run_dir, ""), names)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            ran = runner.run_stages(runner.StageContext(config, run_dir, ""), names)
            times.append(time.perf_counter() - t0)
            assert ran == [], ran
        outputs = sum(len(SIZES[name]) for name in names) + 1
        total = sum(sum(sizes.values()) for sizes in SIZES.values())
    result: dict[str, Any] = {
        "output_files": outputs, "output_bytes": total, "first_run_with_records_s": round(first, 3),
        "fresh_run_s_median": round(statistics.median(times), 3), "fresh_run_s": [round(t, 3) for t in times]}
    out = Path(__file__).resolve().parent / "results" / "bench_freshness.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
