"""ST-SAE training throughput: triplets/s per K, GFLOP/s vs this machine's fp32 GEMM, sparse vs dense
Top-K decode, fp32 vs bf16, the steady state with AuxK active (timed once the dead-latent window is
full, so AuxK's cost, proportional to the dead latents, is in the step) and the demo grid's
estimated wall time; or, with `--fused M`, the first M
models of the demo grid at its K trained one by one and then as one fused group (wall time ratio, and
whether every member's weights came out identical). All numbers come from one run, so compare the
ratios; absolute figures depend on the machine and its load.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 5] [--out benchmarks/results/train.json]
    .venv/bin/python benchmarks/bench_train.py --fused 12 [--threads 2] [--out benchmarks/results/train_fused.json]
    .venv/bin/python benchmarks/bench_train.py --codes-ab [--threads 1] [--steps 3] [--out ...train_codes_ab.json]
    .venv/bin/python benchmarks/bench_train.py --decode-ab [--threads 1] [--steps 3] [--out ...train_decode_ab.json]

--codes-ab times the Top-K step with L_smooth / L_stab / L_sp and the fired latents computed from the k
active codes against the same step on codes scattered into dense [M, 3B, K], in alternating rounds of
one process, per K, and checks that both end with identical weights (what the trainer's
SPARSE_CODE_LOSSES_MIN_RATIO is set from). --decode-ab does the same for the decode by gathering the active
atoms against a dense matmul of the scattered codes (what `train.sparse_decode: auto` is set from).

Measured 2026-11-30 with --fused 12 (demo grid at K=128: 6 variants x 2 seeds, batch 256, 4973 train
pairs), on the 2-core machine shared with other jobs (1-min load average 5-10, so absolute seconds are
~5-10x an idle run's):
- --threads 1, 600 steps: one by one 1060.5 s, fused 555.5 s (x1.91); weights identical.
- --threads 1, 150 steps: one by one 72.8 s, fused 68.5 s (x1.06); weights identical.
- paired rounds of 5 steps (12 single steps vs 1 fused step, same process): x0.84-1.11 at 1 thread,
  x2.2-3.6 at 2 threads. At one thread a K=128 step is mostly compute (top-k, the encoder GEMM, gathers,
  elementwise loss terms, all x12 in a fused step), so fusing mostly saves per-op and thread-pool
  overhead: the gain grows with threads and shrinks with K. Not yet measured on an idle machine.

Measured 2026-11-30, `--threads 1 --steps 3` (demo config, `full` variant, batch 256, dead window 10 000
samples; machine shared with a 1M-window extraction and a benchmark, load 4.4-4.9): with AuxK active
(timed from step 42, dead window full) the step runs at 0.86x (K=1024, 1 % dead), 0.81x (2048, 2 %),
0.91x (4096, 4 %) and 0.65x (8192, 7 % dead) of the first steps' rate. At K=8192 the 7 % dead are 573
latents, so AuxK decodes the full k_aux = 256 atoms per row against k = 32 for the main code; at smaller
K it decodes min(256, dead) atoms, and three timed steps on a loaded machine do not separate that cost
from noise. Rerun idle with more --steps before quoting a ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stsae.config import TrainSection, load_config
from stsae.data.dataset import WindowTripletDataset
from stsae.train.grid import build_grid
from stsae.train.trainer import FusedTrainer, Member, Trainer, variant_spec
from stsae.utils import io

D = 512
SIZES = (1024, 2048, 4096, 8192)


def synthetic(n: int = 8192) -> tuple[WindowTripletDataset, WindowTripletDataset]:
    """Low-rank, large-mean embeddings shaped like PaPaGei-S's (DESIGN §6), 40-window records."""
    rs = np.random.default_rng(0)
    z = (rs.normal(size=(n, 12)) @ rs.normal(size=(12, D)) + 10 * rs.normal(size=D)).astype(np.float32)
    z_aug = (z + 0.1 * rs.normal(size=z.shape)).astype(np.float32)
    index = pd.DataFrame({"record_id": np.repeat(np.arange(n // 40 + 1), 40)[:n].astype(str),
                          "segment_idx": np.tile(np.arange(40), n // 40 + 1)[:n],
                          "split": np.where(np.arange(n) < int(0.85 * n), "train", "val")})
    return WindowTripletDataset(z, z_aug, index, "train"), WindowTripletDataset(z, z_aug, index, "val")


def gemm_gflops(repeats: int = 10) -> float:
    """fp32 GEMM GFLOP/s at the encoder's shape class ([768, 512] x [512, 8192])."""
    a, b = torch.randn(768, D), torch.randn(D, 8192)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * 768 * D * 8192 * repeats / (time.perf_counter() - t0) / 1e9


def step_seconds(train: WindowTripletDataset, cfg: TrainSection, variant: str, d_dict: int,
                 steps: int, warmup: int = 2) -> tuple[float, float]:
    """(median wall seconds of one optimizer step after `warmup` steps, dead fraction by the trainer's
    tracker when the timing starts; NaN before a dead window of samples was seen)."""
    trainer = Trainer(train, None, cfg, variant, d_dict, seed=0, steps=steps + warmup)
    for _ in range(warmup):
        trainer.update()
    dead = trainer.dead_latents()["dead_fraction_train"]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.update()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float("nan") if dead is None else float(dead)


def auxk_warmup(cfg: TrainSection, d_dict: int) -> int:
    """Steps until the dead-latent window is full, so AuxK runs on every timed step after it."""
    return math.ceil(cfg.dead_window_for(d_dict) / cfg.batch_size) + 2


def counted_flops(cfg: TrainSection, variant: str, d_dict: int) -> float:
    """FLOPs of the dense work in one step: the encoder GEMM over all encoded rows, plus L_div."""
    weights = variant_spec(cfg, variant).weights
    rows = cfg.batch_size * (1 + (weights.smooth > 0) + (weights.stab > 0))
    m = min(cfg.div_sample, d_dict)
    div = 3 * 2 * m * m * D if weights.div > 0 else 0
    return 2 * rows * D * d_dict + div


def fused_vs_sequential(n_models: int, steps: int | None) -> dict:
    """Wall seconds of the first `n_models` demo-grid models at the demo's K trained one by one, then as
    one fused group, on demo-sized data (~5.1k train pairs, validation included); same seeds, so every
    member must come out with the weights it got alone."""
    demo = load_config(Path("configs/demo.yaml")).train
    train, val = synthetic(6000)
    entries = [e for e in build_grid(demo) if e.d_dict == demo.d_dict][:n_models]
    members = [Member(e.variant, e.seed, train, val) for e in entries]
    total = demo.steps if steps is None else steps
    t0 = time.perf_counter()
    alone = []
    for member in members:
        trainer = Trainer(train, val, demo, member.variant, demo.d_dict, member.seed, steps=total)
        trainer.train()
        alone.append(trainer.result()[0].tensors())
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    group = FusedTrainer(members, demo, demo.d_dict, steps=total)
    group.train()
    fused = time.perf_counter() - t0
    identical = all(torch.equal(value, group.result(i)[0].tensors()[name])
                    for i, tensors in enumerate(alone) for name, value in tensors.items())
    return {"models": [f"{e.variant}-s{e.seed}" for e in entries], "d_dict": demo.d_dict, "steps": total,
            "batch_size": demo.batch_size, "train_pairs": len(train), "sequential_s": sequential,
            "fused_s": fused, "speedup": sequential / fused, "identical_weights": identical}


AB_SETTINGS = {
    "codes": "L_smooth / L_stab / L_sp and the fired latents on the active Top-K entries vs dense [M, 3B, K] codes",
    "decode": "the reconstruction by gathering the k active atoms vs a dense matmul of the scattered codes",
}


def _ab_trainers(kind: str, train: WindowTripletDataset, cfg: TrainSection, size: int,
                 steps: int) -> tuple[dict[str, Trainer], str]:
    """The "sparse" and "dense" trainer of one A/B setting (same seed, so both see the same batches) and
    which of the two the trainer's default picks at this K."""
    if kind == "decode":
        runs = {name: Trainer(train, None, cfg.model_copy(update={"sparse_decode": name == "sparse"}), "full",
                              size, seed=0, steps=steps) for name in ("sparse", "dense")}
        return runs, "sparse" if cfg.sparse_decode_for(size) else "dense"
    runs = {name: Trainer(train, None, cfg, "full", size, seed=0, steps=steps) for name in ("sparse", "dense")}
    default = runs["sparse"].group.sparse_code_losses
    for name, trainer in runs.items():
        trainer.group.sparse_code_losses = name == "sparse"
    return runs, "sparse" if default else "dense"


def paired_ab(kind: str, steps: int, rounds: int = 30) -> dict:
    """Per K: median over `rounds` alternating rounds of `steps` steps of the step time with the sparse
    and the dense form of `AB_SETTINGS[kind]`, the per-round ratios, which one the trainer picks at that
    K, and whether the two trainers' weights are identical at the end (the code losses are exact; the
    two decodes add in different orders)."""
    train, _ = synthetic()
    cfg = load_config(Path("configs/demo.yaml")).train.model_copy(update={"d_dict_sweep": list(SIZES)})
    out = {}
    for size in (128, 256, 512, *SIZES):
        runs, default = _ab_trainers(kind, train, cfg, size, (rounds + 1) * steps)
        times: dict[str, list[float]] = {"sparse": [], "dense": []}
        for round_ in range(rounds + 1):  # round 0 warms up
            for name, trainer in runs.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    trainer.update()
                if round_:
                    times[name].append((time.perf_counter() - t0) / steps)
        ratios = [d / s for s, d in zip(times["sparse"], times["dense"], strict=True)]
        identical = all(torch.equal(value, runs["dense"].model.tensors()[name])
                        for name, value in runs["sparse"].model.tensors().items())
        out[size] = {"sparse_step_s": float(np.median(times["sparse"])),
                     "dense_step_s": float(np.median(times["dense"])),
                     "dense_over_sparse_median_ratio": float(np.median(ratios)), "round_ratios": ratios,
                     "trainer_uses": default, "identical_weights": identical}
        print(f"K={size:5d}: sparse {out[size]['sparse_step_s'] * 1e3:6.1f} ms, dense "
              f"{out[size]['dense_step_s'] * 1e3:6.1f} ms per step; dense/sparse per round: median "
              f"{np.median(ratios):.2f} [{np.quantile(ratios, 0.25):.2f}, {np.quantile(ratios, 0.75):.2f}]; "
              f"trainer uses {default}; identical weights: {identical}")
    return {"setting": AB_SETTINGS[kind], "variant": "full", "batch_size": cfg.batch_size, "k": cfg.k,
            "steps_per_round": steps, "rounds": rounds, "per_k": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per timing (default 5), or per model with --fused (default: the demo's)")
    parser.add_argument("--fused", type=int, default=0, metavar="M",
                        help="only compare M demo-grid models trained one by one vs as one fused group")
    parser.add_argument("--codes-ab", action="store_const", const="codes", dest="ab",
                        help="only time the Top-K step on sparse vs dense codes, paired, per K")
    parser.add_argument("--decode-ab", action="store_const", const="decode", dest="ab",
                        help="only time the Top-K step with the gathered vs the dense decode, paired, per K")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ab:
        result = paired_ab(args.ab, args.steps or 3)
        result.update(threads=args.threads, machine=platform.processor() or platform.machine())
        io.write_json(args.out or Path(f"benchmarks/results/train_{args.ab}_ab.json"), result)
        return
    if args.fused:
        load_before = os.getloadavg()[0]
        fused = fused_vs_sequential(args.fused, args.steps)
        fused.update(threads=args.threads, load_average_1min_before=load_before,
                     load_average_1min_after=os.getloadavg()[0])
        print(f"{args.fused} models K={fused['d_dict']}, {fused['steps']} steps: one by one "
              f"{fused['sequential_s']:.1f} s, fused {fused['fused_s']:.1f} s (x{fused['speedup']:.2f}), "
              f"identical weights: {fused['identical_weights']}")
        io.write_json(args.out or Path("benchmarks/results/train_fused.json"), fused)
        return
    args.steps = args.steps or 5
    train, _ = synthetic()
    demo = load_config(Path("configs/demo.yaml")).train
    cfg = demo.model_copy(update={"d_dict_sweep": list(SIZES)})
    load_before = os.getloadavg()[0]
    peak = gemm_gflops()
    result: dict = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                    "load_average_1min_before": load_before, "gemm_fp32_gflops": peak, "per_k": {}}
    for size in SIZES:
        dense_cfg = cfg.model_copy(update={"sparse_decode": False})
        bf16_cfg = cfg.model_copy(update={"bf16": True})
        fp32, _ = step_seconds(train, cfg, "full", size, args.steps)
        dense, _ = step_seconds(train, dense_cfg, "full", size, args.steps)
        bf16, _ = step_seconds(train, bf16_cfg, "full", size, args.steps)
        steady, dead = step_seconds(train, cfg, "full", size, args.steps, warmup=auxk_warmup(cfg, size))
        gflops = counted_flops(cfg, "full", size) / fp32 / 1e9
        result["per_k"][size] = {
            "triplets_per_s": cfg.batch_size / fp32, "step_s": fp32, "achieved_gflops": gflops,
            "fraction_of_gemm": gflops / peak, "dense_decode_step_s": dense,
            "sparse_over_dense_speedup": dense / fp32, "bf16_step_s": bf16, "bf16_speedup": fp32 / bf16,
            "auxk_active": {"after_steps": auxk_warmup(cfg, size), "dead_fraction": dead, "step_s": steady,
                            "triplets_per_s": cfg.batch_size / steady, "over_first_steps": fp32 / steady}}
        print(f"K={size:5d}: {cfg.batch_size / fp32:7.0f} triplets/s, {gflops:5.1f} GFLOP/s "
              f"({gflops / peak:4.0%} of GEMM {peak:.1f}), sparse/dense decode x{dense / fp32:.2f}, "
              f"bf16 x{fp32 / bf16:.2f}; with AuxK active (step {auxk_warmup(cfg, size)}, {dead:.0%} dead) "
              f"{cfg.batch_size / steady:7.0f} triplets/s (x{fp32 / steady:.2f} of the first steps')")
    measured = ("full", "no_smooth", "vanilla")
    per_variant = {v: step_seconds(train, demo, v, demo.d_dict, args.steps)[0] for v in measured}
    same_cost = {"no_stab": "no_smooth", "no_div": "full", "no_renorm": "full"}
    estimate = sum(per_variant[same_cost.get(e.variant, e.variant)] * e.d_dict / demo.d_dict * demo.steps
                   for e in build_grid(demo))
    result["demo_grid"] = {"models": len(build_grid(demo)), "step_s_at_k1024": per_variant,
                           "estimated_seconds": estimate}
    result["load_average_1min_after"] = os.getloadavg()[0]
    print(f"demo grid ({len(build_grid(demo))} models, {demo.steps} steps): ~{estimate:.0f} s estimated; "
          f"load average {load_before:.1f} -> {result['load_average_1min_after']:.1f}")
    io.write_json(args.out or Path("benchmarks/results/train.json"), result)


if __name__ == "__main__":
    main()
