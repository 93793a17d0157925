"""Why the Top-K SAE converged slowly and left most latents dead: initialisation, lr scaling, AuxK.

Trains the plain Top-K SAE (variant `vanilla`: L_rec + AuxK) on synthetic embeddings shaped like
PaPaGei-S's (DESIGN §6: low effective rank, ‖μ‖/‖σ‖ ≈ 10) under several settings and records, at
each checkpoint step: held-out EV = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²; the fraction of latents that never
fire on the held-out rows (count stated); the Gao-style training dead fraction (no firing in the last
`dead_after_samples` training rows); the AuxK loss (1 = the dead latents explain none of the
residual); and the mean step time. Threads default to 1: the box is shared, compare ratios.

    .venv/bin/python benchmarks/bench_sae_init.py [--sizes 1024 2048] [--steps 50 250]
        [--batch 1024] [--seeds 0] [--run-dir runs/demo] [--cost] [--out benchmarks/results/sae_init.json]

Measured 2026-11-30 (batch 1024, k 32, 250 steps; never-fired on the held-out rows / tracker dead):
- demo-like run (synthetic cohort, 1500 patients, random PaPaGei-S; 10 468 train rows, 5 769 held out,
  effective rank 6.4, ‖μ‖/‖σ‖ 9.4): data rows unscaled start at L_rec 564× (K=1024) / 601× (K=2048);
  EV@50 0.19 / 0.07 vs random tied 0.88 / 0.88; EV@250 0.939 / 0.941 vs 0.946 / 0.947. Dead at
  K=2048: 26 % / 5.4 % (data rows), 26 % / 9.1 % (random, lr 1e-3), 14 % / 3.9 % (random, lr·√(1024/K)).
  Data rows scaled (K=1024): EV@50 0.92 but 34 % / 27 % dead.
- synthetic rank-12 (40 000 train, 8 192 held out), K=1024, seeds 0–2: random tied 6–10 % / 0.3–0.4 %
  dead, with the least-squares encoder scale 21–34 % / 1.7–3.5 %; without AuxK 18 % / 4.7 % (seed 0).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stsae.config import TrainSection
from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import load_embeddings
from stsae.models.stsae import STSAE, effective_rank
from stsae.rundir import RunDir
from stsae.train.losses import l_auxk, l_rec
from stsae.train.trainer import Trainer
from stsae.utils import io

D = 512
RANK = 12
SETTINGS: dict[str, dict[str, Any]] = {
    "data_rows": {"init": "data", "init_fit_scale": False},
    "data_rows_scaled": {"init": "data", "init_fit_scale": True},
    "random_tied": {"init": "random", "init_fit_scale": False},
    "random_tied_scaled": {"init": "random", "init_fit_scale": True},
    "random_tied_kaux32": {"init": "random", "init_fit_scale": False, "aux_k": 32},
    "random_tied_lr_inv_sqrt_k": {"init": "random", "init_fit_scale": False, "lr_reference_d_dict": 1024},
    "random_tied_no_auxk": {"init": "random", "init_fit_scale": False, "loss_weights": {"auxk": 0.0}},
}


def embeddings(n_train: int, n_held: int, seed: int = 0) -> tuple[WindowTripletDataset, np.ndarray]:
    """Rows z = μ + c·diag(1/√i)·B + noise: a rank-12 model with a decaying spectrum plus isotropic
    noise at 1 % of the signal power, and a mean 10× the spread. Returns (train pairs, held-out rows)."""
    rs = np.random.default_rng(seed)
    n = n_train + n_held
    signal = (rs.normal(size=(n, RANK)) / np.sqrt(np.arange(1, RANK + 1))) @ rs.normal(size=(RANK, D))
    spread = np.sqrt((signal**2).sum(1).mean())
    z = signal + 0.1 * spread / np.sqrt(D) * rs.normal(size=(n, D))
    z = (z + 10 * spread * rs.normal(size=D) / np.sqrt(D)).astype(np.float32)
    index = pd.DataFrame({"record_id": (np.arange(n_train) // 40).astype(str),
                          "segment_idx": np.arange(n_train) % 40, "split": "train"})
    return WindowTripletDataset(z[:n_train], z[:n_train], index, "train"), z[n_train:]


def run_embeddings(root: Path) -> tuple[WindowTripletDataset, np.ndarray]:
    """Train pairs and held-out (val + test) rows of a run directory's extracted embeddings."""
    emb = load_embeddings(RunDir(root))
    z = np.asarray(emb.z, dtype=np.float32)
    held = emb.index["split"].to_numpy() != "train"
    return WindowTripletDataset(z, np.asarray(emb.z_aug), emb.index, "train"), z[held]


@torch.no_grad()
def held_out(model: STSAE, z: np.ndarray) -> dict[str, float]:
    """EV and never-firing fraction of `model` on held-out rows z: float32[N, 512]."""
    x = model.standardise(torch.from_numpy(z))
    codes = model.codes(x, dense=False)
    x_hat = model.decode_codes(codes)
    ev = 1 - float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert codes.idx is not None and codes.vals is not None
    fired = torch.zeros(model.d_dict, dtype=torch.bool)
    fired[codes.idx[codes.vals > 0]] = True
    return {"heldout_ev": ev, "heldout_never_fired": 1 - float(fired.float().mean())}


@torch.no_grad()
def initial_overshoot(trainer: Trainer, z: np.ndarray) -> float:
    """Σ‖x − x̂‖² / Σ‖x − x̄‖² on held-out rows before any step (1 = no better than the mean)."""
    return 1 - held_out(trainer.model, z)["heldout_ev"]


def run(train: WindowTripletDataset, z_held: np.ndarray, d_dict: int, overrides: dict[str, Any],
        checkpoints: list[int], batch: int, k: int, seed: int) -> dict[str, Any]:
    """Train one setting to max(checkpoints) steps, measuring at every checkpoint."""
    cfg = TrainSection(**{"d_dict": d_dict, "k": k, "batch_size": batch, "steps": max(checkpoints),
                          "warmup_steps": 10, "eval_every": 10**9, "checkpoint_every": 10**9,
                          "d_dict_sweep": [d_dict], "keep_best": False, **overrides})
    trainer = Trainer(train, None, cfg, "vanilla", d_dict, seed=seed)
    out: dict[str, Any] = {"initial_l_rec": initial_overshoot(trainer, z_held), "lr": cfg.lr_for(d_dict),
                           "at_step": {}}
    seconds: list[float] = []
    while trainer.step < max(checkpoints):
        t0 = time.perf_counter()
        last = trainer.update()
        seconds.append(time.perf_counter() - t0)
        if trainer.step in checkpoints:
            out["at_step"][str(trainer.step)] = {
                **held_out(trainer.model, z_held), "train_dead_fraction": last["dead_fraction"],
                "l_auxk": last["l_auxk"], "mean_step_s": float(np.mean(seconds))}
    return out


def auxk_step_seconds(z: np.ndarray, d_dict: int, batch: int, k: int, n_dead: int, k_aux: int,
                      repeats: int = 5) -> float:
    """Median seconds of one forward + backward of L_rec + AuxK with `n_dead` dead latents."""
    gen = torch.Generator().manual_seed(0)
    model = STSAE(D, d_dict, "topk", k, generator=gen)
    model.init_from_data(z, gen)
    x = model.standardise(torch.from_numpy(z[:batch]))
    dead = torch.zeros(d_dict, dtype=torch.bool)
    dead[torch.randperm(d_dict, generator=gen)[:n_dead]] = True
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        codes = model.codes(x, dead if n_dead else None, k_aux, dense=False)
        x_hat = model.decode_codes(codes)
        loss = l_rec(x, x_hat)
        if codes.aux_idx is not None and codes.aux_vals is not None:
            loss = loss + l_auxk(x - x_hat, model.sparse_combination(codes.aux_idx, codes.aux_vals)) / 32
        loss.backward()
        model.zero_grad()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 250])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=40_000)
    parser.add_argument("--n-held", type=int, default=8192)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="use this run's extracted embeddings (held out: val + test) instead of synthetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--cost", action="store_true", help="also time one AuxK step per dead count")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sae_init.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, z_held = (run_embeddings(args.run_dir) if args.run_dir is not None
                     else embeddings(args.n_train, args.n_held))
    z_train = np.asarray(train.z[np.unique(train.pairs.ravel())], dtype=np.float32)
    centred = z_train - z_train.mean(0)
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "data": {"source": str(args.run_dir or "synthetic"), "n_train": len(z_train), "n_held_out": len(z_held),
                 "n_train_pairs": len(train),
                 "effective_rank": effective_rank(centred),
                 "mean_norm_over_std": float(np.linalg.norm(z_train.mean(0)) / np.sqrt((centred**2).sum(1).mean()))},
        "k": args.k, "batch_size": args.batch, "dead_after_samples": TrainSection().dead_after_samples,
        "runs": {}}
    if args.cost:
        result["auxk_step_s"] = {
            f"K{d_dict}/dead{n_dead}/kaux{k_aux}": auxk_step_seconds(z_train, d_dict, args.batch, args.k,
                                                                       n_dead, k_aux)
            for d_dict in args.sizes for n_dead in (0, d_dict // 16, d_dict // 2) for k_aux in (32, 256)}
        io.write_json(args.out, result)
    for d_dict, name, seed in itertools.product(args.sizes, args.settings, args.seeds):
        if name.endswith("lr_inv_sqrt_k") and d_dict == SETTINGS[name]["lr_reference_d_dict"]:
            continue  # identical to random_tied_scaled at the reference K
        key = f"K{d_dict}/{name}/s{seed}"
        result["runs"][key] = run(train, z_held, d_dict, SETTINGS[name], args.steps, args.batch, args.k, seed)
        io.write_json(args.out, result)
        print(key, result["runs"][key], flush=True)


if __name__ == "__main__":
    main()
