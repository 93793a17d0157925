"""The demo's stage seconds of this working tree against another commit, paired on one machine.

Why paired: this development box's speed drifts by up to 1.5x within an hour (the same code gave demo
stage sums of 146, 178 and 209 s within 35 minutes), so an absolute stage sum says more about the hour
than about the code. Here the two versions alternate run for run, each from an empty run directory,
and the JSON records every run's stage seconds, the per-round ratio of stage sums, and whether the two
versions wrote byte-identical models and leaderboards (a speed change that should not move results).

The base version runs from a `git worktree` of `--base` (made under $TMPDIR, removed after) with this
venv's interpreter: its `src/` goes first on PYTHONPATH, so the venv's dependencies serve both.

    .venv/bin/python benchmarks/bench_demo_paired.py --base 5625398 [--rounds 2]
        [--config configs/demo.yaml] [--out benchmarks/results/demo_paired.json]

Measured 2026-12-01 (session 11): see benchmarks/README.md, "Demo stage time, paired (session 11)".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stsae.utils import io

ROOT = Path(__file__).resolve().parents[1]


def digest(paths: list[Path]) -> str:
    """sha256 over the bytes of `paths` in order (first 16 hex digits)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_demo(src: Path, config: Path, run_dir: Path) -> dict:
    """`stsae run` of the package under `src` into an empty run_dir; its stage seconds and output digests."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stsae", "run", "-q", "--config", str(config),
                           "--run-dir", str(run_dir)], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_demo_paired: `stsae run` from {src} failed:\n{proc.stderr[-3000:]}")
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    seconds = {name: stage["seconds"] for name, stage in stages.items()}
    return {"wall_s": wall, "stage_seconds": seconds, "stage_sum_s": sum(seconds.values()),
            "models_sha256": digest(sorted((run_dir / "models").glob("*.safetensors"))),
            "leaderboard_sha256": digest([run_dir / "eval" / "leaderboard.json"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="commit (or ref) to compare this working tree against")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each version, alternating (default 2)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_paired.json")
    args = parser.parse_args()
    base_commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{args.base}^{{commit}}"],
                                 capture_output=True, text=True, check=False)
    if base_commit.returncode != 0:
        raise SystemExit(f"bench_demo_paired: --base {args.base!r} is not a commit of {ROOT}")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="stsae-paired-") as tmp:
        worktree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(worktree),
                        base_commit.stdout.strip()], check=True)
        try:
            versions = {"base": worktree / "src", "this": ROOT / "src"}
            runs: dict[str, list[dict]] = {name: [] for name in versions}
            for round_ in range(args.rounds):
                for name, src in versions.items():
                    result = run_demo(src, args.config, Path(tmp) / f"run-{name}")
                    runs[name].append(result)
                    print(f"round {round_ + 1} {name:4s}: stage sum {result['stage_sum_s']:6.1f} s "
                          f"({', '.join(f'{k} {v:.1f}' for k, v in result['stage_seconds'].items())})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    ratios = [this["stage_sum_s"] / base["stage_sum_s"] for base, this in zip(runs["base"], runs["this"], strict=True)]
    same = {key: runs["base"][0][key] == runs["this"][0][key] for key in ("models_sha256", "leaderboard_sha256")}
    result = {"base": base_commit.stdout.strip(), "this": head, "this_has_uncommitted_changes": dirty,
              "config": str(args.config), "rounds": args.rounds, "runs": runs,
              "stage_sum_ratio_this_over_base": ratios, "median_ratio": float(np.median(ratios)),
              "byte_identical": same}
    print(f"stage sum this / base per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"byte-identical models {same['models_sha256']}, leaderboard {same['leaderboard_sha256']}")
    io.write_json(args.out, result)


if __name__ == "__main__":
    main()
