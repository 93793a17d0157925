"""GPU throughput against the targets of issue 21, in one run on one CUDA device, within a time budget.

Measures (each section records its own seconds; a section that would overrun `--budget-s` is recorded as
skipped with the reason, never silently dropped):
  (a) gemm: the device's dense GEMM rate in bf16 and fp32 (8192³, best of reps): the roofline.
  (b) augmentation: windows/s of both augmented views (z_aug, z_aug_heldout) where extraction can make
      them: on the host in one thread (numpy draws + arithmetic, `extract.augment_on: cpu`: the loader's
      ceiling per core; the draws alone: the host's share under `augment_on: device`), on the device from
      host draws (float64 as extraction runs it, float32 for comparison) and from Philox draws
      (`extract.augment_draws: philox`), and the device's float64 windows against numpy's (parity);
      model_only: the eager encoder on device-resident batches in fp32, bf16 and bf16 with cuDNN autotuning,
      bf16 vs fp32 parity (min row cosine, max row relative error of the embeddings); extract: the extract
      stage end to end from windows.npy on disk (loader thread, augmentation workers, the three views
      z / z_aug / z_aug_heldout, memmap writes) in bf16 and fp32, as QC-passed windows/s and encodes/s
      (3 views per window), with the augmentation on the device (auto on CUDA); extract_augment: the same
      in bf16 with the augmentation on the host (augment_on: cpu, augment_workers auto) and with Philox
      draws on the device; model_compiled / extract_compiled: the same compiled (last: compiling is the
      slowest part); every rate also as a fraction of the GEMM roofline at 0.152 GFLOP per encode.
  (c) sae: ST-SAE training triplets/s at K = 8192 and 2048 for `vanilla` and `full` (batch 256 and 4096),
      and the dense FLOPs of a step (encoder GEMM forward + backward) per second as a fraction of the
      bf16 GEMM rate.
  (d) demo: `stsae run` on configs/demo.yaml with every device key set to cuda, end to end (wall seconds).
Targets (issue 21): extraction >= 50,000 windows/s; SAE at K = 8192 >= 40 % of bf16 GEMM; demo < 60 s.
Without CUDA it exits at once with a message and status 2.

    python benchmarks/bench_gpu.py [--budget-s 360] [--windows 65536] [--out gpu.json] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

GFLOP_PER_WINDOW = 0.152  # PaPaGei-S forward (DESIGN §6, torch.utils.flop_counter)
TARGET_WINDOWS_PER_S = 50_000
TARGET_SAE_FRACTION = 0.40
TARGET_DEMO_S = 60.0


class Budget:
    """Wall-clock budget shared by the sections; `allows(need_s)` says whether a section still fits."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def allows(self, need_s: float) -> bool:
        return self.left() >= need_s


class Recorder:
    """The result JSON, rewritten after every section, so a run cut short by the device's time limit still
    leaves every finished measurement behind."""

    def __init__(self, out: Path, budget: Budget, result: dict[str, Any]):
        from stsae.utils.io import write_json

        self.out, self.budget, self.result, self._write = out, budget, result, write_json
        self._write(out, result)

    def section(self, name: str, need_s: float, body: Callable[[], dict[str, Any]]) -> None:
        """Run one measurement into result[name] with its seconds, or record why it was skipped; an error
        is recorded with its type, so the other sections still run on a one-shot device."""
        if not self.budget.allows(need_s):
            self.result[name] = {"skipped": f"budget: {self.budget.left():.0f} s left, needs ~{need_s:.0f} s"}
        else:
            started = time.perf_counter()
            try:
                self.result[name] = body()
            except Exception as exc:  # recorded, not hidden: the JSON says which section failed and why
                self.result[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            self.result[name]["seconds"] = time.perf_counter() - started
        self._write(self.out, self.result)
        print(f"{name}: {json.dumps(self.result[name])[:800]}", flush=True)


def _timed_rate(work: Callable[[], None], items: int, reps: int) -> float:
    """Items per second of `work` (best of reps, CUDA-synchronised) after one warm-up call."""
    work()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        work()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return items / best


def gemm(device: torch.device, size: int = 8192, reps: int = 10) -> dict[str, Any]:
    """Dense GEMM TFLOP/s in bf16 and in IEEE fp32 (TF32 off) on `device`."""
    out: dict[str, Any] = {"size": size}
    saved = torch.backends.cuda.matmul.fp32_precision
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            torch.backends.cuda.matmul.fp32_precision = "ieee"
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            out[f"{name}_tflops"] = _timed_rate(lambda a=a, b=b: a @ b, 2 * size**3, reps) / 1e12
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
    return out


def synthetic_windows(n: int, seed: int = 0) -> np.ndarray:
    """float32[n, 1250] z-scored pulse-like windows (random rate, harmonic, noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(1250, dtype=np.float32) / 125.0
    rate = rng.uniform(0.9, 1.8, (n, 1)).astype(np.float32)
    phase = 2 * np.pi * rate * t
    x = np.sin(phase) + 0.3 * np.sin(2 * phase + 1) + 0.05 * rng.standard_normal((n, 1250), dtype=np.float32)
    return ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(np.float32)


def write_windows_dir(root: Path, n: int) -> Any:
    """A prepare-stage output of n windows, all QC-passed, in the real formats."""
    from stsae.rundir import RunDir
    from stsae.utils import io

    paths = RunDir(root)
    paths.windows.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(paths.manifest, {"run_name": "bench-gpu"})
    io.save_npy(paths.windows, synthetic_windows(n))
    ids = np.arange(n, dtype=np.int64)
    io.write_parquet(paths.meta, pd.DataFrame({
        "window_id": ids, "patient_id": [f"P{i // 100}" for i in ids], "record_id": [f"R{i // 20}" for i in ids],
        "segment_idx": ids % 20, "t_start_s": 10.0 * (ids % 20), "split": "train"}))
    io.write_parquet(paths.qc, pd.DataFrame({"window_id": ids, "qc_pass": True, "qc_reason": ""}))
    return paths


def _embedder_and_batch(device: torch.device, batch: int) -> tuple[Any, torch.Tensor]:
    from stsae.models.encoder_runtime import FastEmbedder
    from stsae.models.papagei import random_papagei_s

    embedder = FastEmbedder(random_papagei_s(0)).to(device)
    return embedder, torch.from_numpy(synthetic_windows(batch)).to(device).unsqueeze(1)


def _model_rate(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, gemm_result: dict[str, Any],
                bf16: bool, autotune: bool = False) -> dict[str, float]:
    """Encodes/s of `module` on the device-resident batch x under the stage's cuDNN settings (deterministic,
    no autotuning) or with autotuning, and the fraction of the GEMM roofline at that precision."""
    from stsae.utils.device import cuda_math

    def work() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16), \
                cuda_math(x.device, fp32=not bf16):
            if autotune:  # restored by cuda_math on exit
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
            module(x)
    per_s = _timed_rate(work, x.shape[0], reps=5)
    peak = gemm_result["bf16_tflops" if bf16 else "fp32_tflops"] * 1e12
    return {"encodes_per_s": per_s, "fraction_of_gemm": per_s * GFLOP_PER_WINDOW * 1e9 / peak}


def model_only(device: torch.device, gemm_result: dict[str, Any], batch: int = 4096) -> dict[str, Any]:
    """The eager FastEmbedder alone on device-resident windows (the ceiling of the end-to-end stage):
    fp32, bf16, bf16 with cuDNN autotuning (what the stage's determinism costs); bf16 vs fp32 parity."""
    from stsae.models.encoder_runtime import bf16_parity

    embedder, x = _embedder_and_batch(device, batch)
    parity = bf16_parity(embedder, synthetic_windows(1024, seed=1), 512, device)
    return {"batch": batch, "bf16_vs_fp32": {"min_cosine": parity.min_cosine, "max_rel_error": parity.max_rel_error},
            "fp32": _model_rate(embedder, x, gemm_result, bf16=False),
            "bf16": _model_rate(embedder, x, gemm_result, bf16=True),
            "bf16_autotuned": _model_rate(embedder, x, gemm_result, bf16=True, autotune=True)}


def compiled_model_only(device: torch.device, gemm_result: dict[str, Any], batch: int = 4096) -> dict[str, Any]:
    """The CompiledEmbedder (Inductor, frozen) in bf16; compile + first call timed apart."""
    from stsae.models.encoder_runtime import CompiledEmbedder

    embedder, x = _embedder_and_batch(device, batch)
    compiled = CompiledEmbedder(embedder, batch)
    started = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        compiled(x)
    torch.cuda.synchronize()
    return {"batch": batch, "compile_s": time.perf_counter() - started,
            "compiled_bf16": _model_rate(compiled, x, gemm_result, bf16=True)}


def extract_end_to_end(device: torch.device, gemm_result: dict[str, Any], n: int, work: Path,
                       variants: list[str]) -> dict[str, Any]:
    """The extract stage from windows.npy on disk (page-cached, as a re-run meets it), per variant, from
    scratch each time: QC-passed windows/s and encodes/s over the stage's whole wall time (calibration,
    batch-size probe and any compile included)."""
    import shutil

    from stsae.config import load_config
    from stsae.pipeline.manifest import read_manifest
    from stsae.pipeline.runner import StageContext, run_stages

    settings = {"fp32": ["extract.precision=fp32", "extract.compile=false"],
                "bf16": ["extract.precision=bf16", "extract.compile=false"],
                "bf16_augment_cpu": ["extract.precision=bf16", "extract.compile=false", "extract.augment_on=cpu"],
                "bf16_philox": ["extract.precision=bf16", "extract.compile=false", "extract.augment_on=device",
                                "extract.augment_draws=philox"],
                "compiled_bf16": ["extract.precision=bf16", "extract.compile=true"]}
    paths = write_windows_dir(work / "extract", n)
    out: dict[str, Any] = {"windows": n, "views": 3, "chunk_rows": 16384}
    for name in variants:
        shutil.rmtree(paths.embeddings_dir, ignore_errors=True)
        config = load_config(None, ["encoder.allow_random_weights=true", f"extract.device={device}",
                                    "extract.batch_size=auto", "extract.chunk_rows=16384", *settings[name]])
        started = time.perf_counter()
        run_stages(StageContext(config, paths, fingerprint=""), ["extract"])
        seconds = time.perf_counter() - started
        peak = gemm_result["bf16_tflops" if "bf16" in name else "fp32_tflops"] * 1e12
        encodes = 3 * n / seconds
        encoder = read_manifest(paths.manifest)["encoder"]
        out[name] = {"stage_s": seconds, "windows_per_s": n / seconds, "encodes_per_s": encodes,
                     "fraction_of_gemm": encodes * GFLOP_PER_WINDOW * 1e9 / peak, "batch_size": encoder["batch_size"],
                     **{key: encoder[key] for key in ("augment_on", "augment_draws", "augment_workers")},
                     "meets_target": n / seconds >= TARGET_WINDOWS_PER_S}
    return out


def _host_rate(work: Callable[[], Any], n: int) -> float:
    started = time.perf_counter()
    work()
    return n / (time.perf_counter() - started)


def augmentation(device: torch.device, n_host: int = 2048, n_device: int = 16384) -> dict[str, Any]:
    """Windows/s of both augmented views (z_aug and z_aug_heldout, the default config's families) made on
    the host in one thread and on the device, and the device's float64 windows against numpy's."""
    from stsae.config import load_config
    from stsae.data.augment import augment_windows, window_draws
    from stsae.data.augment_torch import augment_tensor
    from stsae.data.augment_views import ViewPlan
    from stsae.data.philox import philox_draws

    augment = load_config(None).data.augment
    recipes = ViewPlan(augment, 125.0, 0, 1250).recipes
    windows, ids = synthetic_windows(n_device), np.arange(n_device)
    host, small = windows[:n_host], ids[:n_host]
    expected = [augment_windows(host, 125.0, augment, seed, small, families) for seed, families in recipes]
    clean, ids_device = torch.from_numpy(windows).to(device), torch.from_numpy(ids).to(device)
    draws = [[torch.from_numpy(a).to(device) for a in window_draws(seed, ids, 1250)] for seed, _ in recipes]

    def from_host_draws(dtype: torch.dtype) -> list[torch.Tensor]:
        return [augment_tensor(clean, u, noise, 125.0, augment, families, dtype)
                for (u, noise), (_, families) in zip(draws, recipes, strict=True)]

    got = [view[:n_host].cpu().numpy() for view in from_host_draws(torch.float64)]
    differences = np.concatenate([np.abs(a - b).ravel() for a, b in zip(got, expected, strict=True)])
    return {
        "views": len(recipes), "host_windows": n_host, "device_windows": n_device,
        "host_numpy_windows_per_s_one_thread": _host_rate(lambda: [augment_windows(
            host, 125.0, augment, seed, small, families) for seed, families in recipes], n_host),
        "host_draws_only_windows_per_s_one_thread": _host_rate(lambda: [window_draws(
            seed, small, 1250) for seed, _ in recipes], n_host),
        "device_f64_from_host_draws_windows_per_s": _timed_rate(lambda: from_host_draws(torch.float64), n_device, 5),
        "device_f32_from_host_draws_windows_per_s": _timed_rate(lambda: from_host_draws(torch.float32), n_device, 5),
        "device_philox_draws_only_windows_per_s": _timed_rate(lambda: [philox_draws(
            seed, ids_device, 1250) for seed, _ in recipes], n_device, 5),
        "device_f64_from_philox_draws_windows_per_s": _timed_rate(lambda: [augment_tensor(
            clean, *philox_draws(seed, ids_device, 1250), 125.0, augment, families)
            for seed, families in recipes], n_device, 5),
        "device_f64_vs_numpy": {"max_abs_diff": float(differences.max()),
                                "identical_fraction": float(np.mean(differences == 0))},
    }


def sae(device: torch.device, gemm_result: dict[str, Any], budget: Budget, steps: int = 20) -> dict[str, Any]:
    """ST-SAE optimizer steps on the device: triplets/s and the dense FLOPs of a step per second as a
    fraction of the bf16 GEMM rate, for K = 8192 and 2048, `vanilla` and `full`, batch 4096 (bf16, fp32) and
    256 (the config default, bf16). Dense FLOPs = 3 x bench_train.counted_flops: the encoder GEMM over every
    encoded row forward and its two backward GEMMs (+ L_div); the sparse Top-K decode is not counted.
    (torch.utils.flop_counter saw only the forward GEMM of a step, so it is not used.)"""
    from bench_train import counted_flops, synthetic
    from stsae.config import load_config
    from stsae.train.trainer import Trainer

    train, _ = synthetic(65_536)
    peak = gemm_result["bf16_tflops"] * 1e12
    out: dict[str, Any] = {}
    cases = [(k, v, b, p) for k in (8192, 2048) for v in ("vanilla", "full") for b, p in
             ((4096, True), (256, True), (4096, False))]
    for d_dict, variant, batch, bf16 in cases:
        name = f"{variant}_K{d_dict}_b{batch}_{'bf16' if bf16 else 'fp32'}"
        if not budget.allows(150):  # the demo and the compiled runs come after
            out[name] = {"skipped": "budget"}
            continue
        cfg = load_config(None, [f"train.batch_size={batch}", f"train.bf16={bf16}"]).train
        trainer = Trainer(train, None, cfg, variant, d_dict, seed=0, steps=100 * steps, device=device)
        flops = 3 * counted_flops(cfg, variant, d_dict)
        per_s = _timed_rate(lambda trainer=trainer: [trainer.update() for _ in range(steps)], batch * steps, reps=1)
        out[name] = {"triplets_per_s": per_s, "gflop_per_step": flops / 1e9,
                     "fraction_of_bf16_gemm": per_s / batch * flops / peak,
                     "meets_target": d_dict == 8192 and per_s / batch * flops / peak >= TARGET_SAE_FRACTION}
    return out


def demo(work: Path, timeout_s: float) -> dict[str, Any]:
    """`stsae run` on the demo config with every device key cuda, in a fresh run directory."""
    run_dir = work / "demo"
    command = [sys.executable, "-m", "stsae", "run", "--config", str(REPO / "configs" / "demo.yaml"),
               "--run-dir", str(run_dir), "--quiet", "--set", "extract.device=cuda", "--set", "train.device=cuda",
               "--set", "eval.device=cuda"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout_s:.0f} s"}
    seconds = time.perf_counter() - started
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    stages = {name: fact.get("seconds") for name, fact in manifest.get("stages", {}).items()}
    return {"returncode": done.returncode, "wall_s": seconds, "stage_seconds": stages,
            "meets_target": done.returncode == 0 and seconds < TARGET_DEMO_S,
            "stderr_tail": done.stderr[-2000:] if done.returncode else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=360.0, help="wall seconds for everything")
    parser.add_argument("--windows", type=int, default=65_536, help="windows in the end-to-end extraction")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"bench_gpu.py: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
              "run it on a GPU machine, e.g. through scripts/gpu_check.sh", file=sys.stderr)
        sys.exit(2)
    from stsae.utils.device import accelerator_facts

    budget = Budget(args.budget_s)
    device = torch.device("cuda", 0)
    bench = Recorder(args.out, budget, {
        "accelerator": accelerator_facts(), "torch": torch.__version__, "host": platform.node(),
        "cpus": os.cpu_count(), "budget_s": args.budget_s,
        "targets": {"extract_windows_per_s": TARGET_WINDOWS_PER_S, "sae_fraction_of_bf16_gemm": TARGET_SAE_FRACTION,
                    "demo_s": TARGET_DEMO_S}})
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        bench.section("gemm", 10, lambda: gemm(device))
        peak = bench.result["gemm"]
        if "bf16_tflops" not in peak:
            sys.exit(f"bench_gpu.py: the GEMM measurement failed; see {args.out}")
        bench.section("augmentation", 15, lambda: augmentation(device))
        bench.section("model_only", 20, lambda: model_only(device, peak))
        bench.section("extract", 60, lambda: extract_end_to_end(device, peak, args.windows, work, ["bf16", "fp32"]))
        bench.section("extract_augment", 60, lambda: extract_end_to_end(
            device, peak, args.windows, work, ["bf16_augment_cpu", "bf16_philox"]))
        bench.section("sae", 60, lambda: sae(device, peak, budget))
        bench.section("demo", 90, lambda: demo(work, max(30.0, budget.left() - 100)))
        bench.section("model_compiled", 60, lambda: compiled_model_only(device, peak))
        bench.section("extract_compiled", 40, lambda: extract_end_to_end(
            device, peak, args.windows, work, ["compiled_bf16"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
