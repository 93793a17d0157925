"""Our Top-K ST-SAE trainer side by side with dictionary_learning's TopKTrainer on the same embeddings.

Why: a plain Top-K SAE has a reference implementation in the field (saprmarks/dictionary_learning,
`TopKTrainer`, AuxK included); our defaults must reach at least its dictionary quality at equal steps,
and our step must stay faster. Everything is measured in ONE process on the same batches, with the
contenders' steps interleaved round-robin (paired A/B rounds), so load on the shared box hits all alike.

Contenders: `stsae_vanilla` (L_rec + AuxK) and `stsae_full` (all ST-SAE losses, three encodes per
triplet) at the config's defaults (`--config`, `--set train.key=value`), and `peer_topk`
(dictionary_learning at its own defaults: lr 2e-4/√(K/2¹⁴), k_aux = d/2, AuxK weight 1/32), on the
same standardised rows x = (z − μ) / s (the transformation our model applies internally), the same
batch order, the same warm-up (`--warmup`) and lr decay (`--decay-start`, none by default).
dictionary_learning's dead-latent window is 10M tokens, which 250 steps never reach; it is set to our
our dead window at that K (`TrainSection.dead_window_for`) so that AuxK is active in both, on the same
definition.
`--arm NAME:train.key=value,...` trains several settings arms of ours side by side (contender
`stsae_<variant>@NAME`, same seed and batches; an arm may set its own warm-up and decay); the peer then
takes the first arm's dead window and lr schedule.

Metrics, at every checkpoint step (`--steps`):
- held-out EV = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² on held-out rows (0: no better than the mean; 1: exact);
- held-out never-firing fraction: latents with no positive code on any held-out row (row count stated;
  reference: 0 for a dictionary whose every atom is used, ≈ 1 − n·k/K when n·k < K);
- training dead fraction: latents not fired in the last `dead_window_for(K)` training rows (Gao et al.).
Speed: per contender, Σ peer seconds / Σ ours seconds (> 1: ours faster) over steps 2 … end, and over
the steady state (steps ≥ `--steady-from` where both have dead latents, i.e. AuxK active in both), with
the median of the per-step paired ratios beside it.

Data (default): a fixed low-effective-rank Gaussian mixture shaped like PaPaGei-S embeddings (DESIGN §6:
effective rank ≈ 12, ‖μ‖/‖σ‖ ≈ 10): 32 clusters in a rank-12 subspace with a 1/√i spectrum, an AR(1)
drift within 40-window records (so z_{t+1} is a real neighbour), 1 % isotropic noise, z_aug = z plus 5 %
noise. Held-out rows are other records. `--run-dir` uses a run's extracted embeddings instead (train
split to train on, val + test held out).

dictionary_learning is never a project dependency: the parent process installs the pinned packages
with `pip --no-deps` into a throwaway virtual environment outside the repository (`--peer-env`;
`--peer-source` installs from a local checkout of github:saprmarks/dictionary_learning instead), adds a
stub `nnsight` (imported only by its LM activation buffers) and reruns itself in that environment.

    .venv/bin/python benchmarks/bench_sae_peer.py [--quick] [--sizes 2048 8192] [--steps 50 250]
        [--batch 4096] [--n-held 20480] [--variants vanilla full] [--set train.lr=0.002]
        [--arm relu:train.auxk_fit_scale=false --arm fit:train.auxk_fit_scale=true]
        [--threads 1] [--out benchmarks/results/sae_peer.json]

Measured 2026-11-30, session 10 (batch 1024, 20 480 held-out rows, one thread, seed 0, constant lr
after a 10-step warm-up; benchmarks/README.md, "The issue's cells with the new default"), ours vs theirs:
K = 2048 EV 0.877 / 0.845 and never-firing 25 % / 53 % after 50 steps, 0.989 / 0.986 and 4.0 % / 7.9 %
after 250; K = 8192 0.783 / 0.740 and 58 % / 64 %, 0.969 / 0.961 and 42 % / 79 %; vanilla step 1.8–2.2×
faster. The lr choice behind it, and what it costs at the end of a schedule: "Peak lr and decay from the
end of warm-up".
Session 12 (lazy Adam, same settings; "Lazy Adam"): never firing after 50 / 250 steps 8.7 / 5.8 % at K = 1024
(theirs 32.7 / 3.1 %), 21.4 / 3.6 % at 2048, 41.8 / 5.2 % at 4096; vanilla step 2.2–2.4× faster.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import site
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

import stsae
from stsae.config import TrainSection, load_config
from stsae.data.dataset import WindowTripletDataset
from stsae.errors import StsaeError
from stsae.models.stsae import effective_rank
from stsae.train.trainer import Trainer
from stsae.utils import io

D = 512
PEER_REQUIREMENTS = ("dictionary-learning==0.1.0", "einops==0.8.2")
PEER_STUBS = {"nnsight": (
    '"""Stub: dictionary_learning imports nnsight only for its language-model activation buffers."""\n\n\n'
    "class LanguageModel:\n"
    "    def __init__(self, *args, **kwargs):\n"
    "        raise RuntimeError('nnsight stub: language models are not part of bench_sae_peer')\n")}
QUICK = {"sizes": [256], "steps": [5, 20], "batch": 256, "n_train": 4096, "n_held": 2048, "steady_from": 8,
         "set": ["train.dead_after_samples=1024"], "warmup": 3}
DEFAULT_OUT = Path("benchmarks/results/sae_peer.json")
_CHUNK = 4096
_RANK, _CLUSTERS, _RECORD = 12, 32, 40


# ---- data -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchData:
    """Train triplets and held-out rows z: float32[N, 512], with what they look like."""

    train: WindowTripletDataset
    held_out: np.ndarray
    source: str


def _records(rs: np.random.Generator, n_records: int, centres: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """float64[n_records·40, 12] latent factors: a cluster centre plus an AR(1) drift (ρ 0.9) per record."""
    rho = 0.9
    start = centres[rs.integers(len(centres), size=n_records)]
    u = np.empty((n_records, _RECORD, _RANK))
    drift = rs.normal(size=(n_records, _RANK)) * spectrum
    for t in range(_RECORD):
        u[:, t] = start + drift
        drift = rho * drift + np.sqrt(1 - rho**2) * rs.normal(size=(n_records, _RANK)) * spectrum
    return u.reshape(-1, _RANK)


def mixture_embeddings(n_train: int, n_held: int, seed: int = 0) -> BenchData:
    """Low-rank Gaussian-mixture rows shaped like PaPaGei-S embeddings (module docstring): the train
    split as 40-window records (temporal pairs), held-out rows from separate records."""
    rs = np.random.default_rng(seed)
    spectrum = 1 / np.sqrt(np.arange(1, _RANK + 1))
    basis = rs.normal(size=(_RANK, D)) / np.sqrt(D)
    centres = rs.normal(size=(_CLUSTERS, _RANK)) * spectrum
    n_rec_train, n_rec_held = -(-n_train // _RECORD), -(-n_held // _RECORD)
    u = _records(rs, n_rec_train + n_rec_held, centres, spectrum)
    signal = u @ basis
    spread = np.sqrt((signal**2).sum(1).mean())
    z = signal + 0.1 * spread / np.sqrt(D) * rs.normal(size=signal.shape)
    z = (z + 10 * spread * rs.normal(size=D) / np.sqrt(D)).astype(np.float32)
    z_aug = (z + 0.05 * spread / np.sqrt(D) * rs.normal(size=z.shape)).astype(np.float32)
    n_tr = n_rec_train * _RECORD
    index = pd.DataFrame({"record_id": (np.arange(n_tr) // _RECORD).astype(str),
                          "segment_idx": np.arange(n_tr) % _RECORD, "split": "train"})
    train = WindowTripletDataset(z[:n_tr], z_aug[:n_tr], index, "train")
    return BenchData(train, z[n_tr:n_tr + n_held], "synthetic low-rank Gaussian mixture")


def run_embeddings(root: Path) -> BenchData:
    """A run directory's extracted embeddings: train split to train on, val + test rows held out."""
    from stsae.data.store import load_embeddings
    from stsae.rundir import RunDir

    emb = load_embeddings(RunDir(root))
    held = emb.index["split"].to_numpy() != "train"
    train = WindowTripletDataset(emb.z, emb.z_aug, emb.index, "train")
    return BenchData(train, np.asarray(emb.z[np.flatnonzero(held)], dtype=np.float32), str(root))


def describe(data: BenchData) -> dict[str, Any]:
    """Row counts, effective rank and ‖μ‖/‖σ‖ of the train rows (DESIGN §6 logs both for every run)."""
    rows = np.unique(data.train.pairs.ravel())
    z = np.asarray(data.train.z[rows], dtype=np.float32)
    centred = z - z.mean(0)
    return {"source": data.source, "n_train_rows": len(rows), "n_train_pairs": len(data.train),
            "n_held_out": len(data.held_out), "effective_rank": effective_rank(centred),
            "mean_norm_over_std": float(np.linalg.norm(z.mean(0)) / np.sqrt((centred**2).sum(1).mean()))}


# ---- metrics --------------------------------------------------------------------------------------
@dataclass
class HeldOutAccumulator:
    """Streams held-out EV and never-firing latents over row chunks (exact, float64 sums)."""

    d_dict: int
    sse: float = 0.0
    s1: Tensor | None = None
    s2: float = 0.0
    n: int = 0
    fired: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.d_dict, dtype=torch.bool)

    def add(self, x: Tensor, x_hat: Tensor, fired: Tensor) -> None:
        """x, x_hat: float32[B, d]; fired: bool[K] latents with a positive code on some row of x."""
        x64 = x.double()
        self.sse += float((x64 - x_hat.double()).pow(2).sum())
        self.s1 = x64.sum(0) if self.s1 is None else self.s1 + x64.sum(0)
        self.s2 += float(x64.pow(2).sum())
        self.n += x.shape[0]
        self.fired |= fired

    def result(self) -> dict[str, float]:
        """heldout_ev = 1 − SSE / Σ‖x − x̄‖²; heldout_never_fired = share of latents never positive."""
        assert self.s1 is not None, "no held-out rows were added"
        total = self.s2 - float(self.s1.pow(2).sum()) / self.n
        if not total > 0:
            raise StsaeError(f"held-out rows ({self.n}) have zero variance: EV is undefined")
        return {"heldout_ev": 1.0 - self.sse / total,
                "heldout_never_fired": 1.0 - float(self.fired.float().mean()), "heldout_rows": self.n}


def paired_speed(ours_s: np.ndarray, peer_s: np.ndarray, steps: np.ndarray) -> dict[str, Any]:
    """Throughput of ours relative to the peer over the selected steps of paired rounds.

    ratio = Σ peer seconds / Σ ours seconds (> 1: ours faster); median_paired = median over steps of
    peer/ours; n_steps counts the selected steps (ratio None when there are none).
    """
    ours, peer = ours_s[steps], peer_s[steps]
    if ours.size == 0:
        return {"ratio": None, "median_paired": None, "n_steps": 0}
    return {"ratio": float(peer.sum() / ours.sum()), "median_paired": float(np.median(peer / ours)),
            "n_steps": int(ours.size), "ours_mean_s": float(ours.mean()), "peer_mean_s": float(peer.mean())}


# ---- contenders -----------------------------------------------------------------------------------
class Contender(Protocol):
    name: str
    d_dict: int

    def step(self, step: int) -> int:
        """One optimizer step; returns the dead latents AuxK could train at this step (0: AuxK idle)."""
        ...

    def reconstruct(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Raw z: float32[B, 512] -> (x, x̂ in the model's space, bool[K] latents fired on some row)."""
        ...

    def train_dead_fraction(self) -> float:
        """Latents not fired in the last dead-window training rows."""
        ...


class Ours:
    """Our Trainer for one variant; its own batch order (`batch_ids`) is the one every contender uses.
    `arm` names a settings arm (`--arm`), appended to the contender's name."""

    def __init__(self, data: BenchData, cfg: TrainSection, variant: str, d_dict: int, seed: int, arm: str = ""):
        self.name, self.d_dict, self.cfg = f"stsae_{variant}" + (f"@{arm}" if arm else ""), d_dict, cfg
        self.trainer = Trainer(data.train, None, cfg, variant, d_dict, seed=seed)
        self.lr = cfg.lr_for(d_dict)

    def step(self, step: int) -> int:
        assert self.trainer.step == step, "contenders must step in lockstep"
        n_dead = int(self.trainer.dead().sum())
        self.trainer.update()
        return n_dead

    @torch.no_grad()
    def reconstruct(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        model = self.trainer.model
        x = model.standardise(z)
        codes = model.codes(x, dense=False)
        assert codes.idx is not None and codes.vals is not None
        fired = torch.zeros(self.d_dict, dtype=torch.bool)
        fired[codes.idx[codes.vals > 0]] = True
        return x, model.decode_codes(codes), fired

    def train_dead_fraction(self) -> float:
        return float(self.trainer.dead().float().mean())


class Peer:
    """dictionary_learning's TopKTrainer at its defaults, fed the same standardised batches as ours."""

    def __init__(self, data: BenchData, reference: Ours, d_dict: int, k: int, steps: int, warmup: int,
                 dead_window: int, seed: int, decay_start: float = 1.0):
        from dictionary_learning.trainers.top_k import TopKTrainer

        self.name, self.d_dict, self.data = "peer_topk", d_dict, data
        self.batch_ids = reference.trainer.batch_ids
        model = reference.trainer.model
        self.mean, self.scale = model.input_mean.clone(), model.input_scale.clone()
        # Ours never decays inside the warm-up (from its end when lr_decay_start is at or below the
        # warm-up fraction); their scheduler refuses a decay that starts at the end of warm-up, so theirs
        # starts one step later.
        decay_step = max(int(decay_start * steps), warmup + 1) if decay_start < 1 else None
        self.trainer = TopKTrainer(steps=steps, activation_dim=D, dict_size=d_dict, k=k, layer=0,
                                   lm_name="bench_sae_peer", warmup_steps=warmup, seed=seed, device="cpu",
                                   decay_start=decay_step)
        self.trainer.dead_feature_threshold = dead_window
        self.lr = float(self.trainer.lr)

    def standardise(self, z: Tensor) -> Tensor:
        return (z - self.mean) / self.scale

    def step(self, step: int) -> int:
        z_t = self.data.train.batch(self.batch_ids(step))[0]
        self.trainer.update(step, self.standardise(z_t))
        return max(int(self.trainer.dead_features), 0)

    @torch.no_grad()
    def reconstruct(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.standardise(z)
        x_hat, f = self.trainer.ae(x, output_features=True)
        return x, x_hat, (f > 0).any(0)

    def train_dead_fraction(self) -> float:
        since = self.trainer.num_tokens_since_fired
        return float((since >= self.trainer.dead_feature_threshold).float().mean())


def held_out_metrics(contender: Contender, z_held: np.ndarray) -> dict[str, float]:
    """Held-out EV and never-firing fraction of one contender (chunks of 4096 rows)."""
    acc = HeldOutAccumulator(contender.d_dict)
    for start in range(0, len(z_held), _CHUNK):
        acc.add(*contender.reconstruct(torch.from_numpy(z_held[start:start + _CHUNK])))
    return acc.result()


# ---- one K ----------------------------------------------------------------------------------------
def round_robin(names: list[str], step: int) -> Iterator[str]:
    """Contender order of a round, rotated each step so no contender always runs first (cache, load)."""
    shift = step % len(names)
    yield from names[shift:] + names[:shift]


def lockstep(contenders: list[Contender], z_held: np.ndarray, checkpoints: list[int],
             log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Train all contenders to max(checkpoints) in paired rounds; held-out metrics at each checkpoint."""
    by_name = {c.name: c for c in contenders}
    names = list(by_name)
    total = max(checkpoints)
    seconds = {n: np.zeros(total) for n in names}
    n_dead = {n: np.zeros(total, dtype=np.int64) for n in names}
    at_step: dict[str, dict[str, Any]] = {n: {} for n in names}
    for step in range(total):
        for name in round_robin(names, step):
            t0 = time.perf_counter()
            n_dead[name][step] = by_name[name].step(step)
            seconds[name][step] = time.perf_counter() - t0
        if step + 1 in checkpoints:
            for name, c in by_name.items():
                at_step[name][str(step + 1)] = {**held_out_metrics(c, z_held),
                                                "train_dead_fraction": c.train_dead_fraction()}
            log(f"step {step + 1}: " + ", ".join(
                f"{n} EV {m[str(step + 1)]['heldout_ev']:.3f} never {m[str(step + 1)]['heldout_never_fired']:.2f}"
                for n, m in at_step.items()))
    return {"seconds": seconds, "n_dead": n_dead, "at_step": at_step}


def summarise(raw: dict[str, Any], steady_from: int) -> dict[str, Any]:
    """Per contender: checkpoints, AuxK activity and mean step; per ours-vs-peer pair: paired speed."""
    seconds, n_dead = raw["seconds"], raw["n_dead"]
    out: dict[str, Any] = {"contenders": {}, "speed_vs_peer": {}}
    for name, dead in n_dead.items():
        active = np.flatnonzero(dead > 0)
        out["contenders"][name] = {
            "at_step": raw["at_step"][name], "mean_step_s": float(seconds[name][2:].mean()),
            "auxk_active_steps": int(active.size), "first_auxk_step": int(active[0]) if active.size else None,
            "dead_at_last_step": int(dead[-1])}
    if "peer_topk" not in seconds:
        return out
    steps = np.arange(len(seconds["peer_topk"]))
    for name in seconds:
        if name == "peer_topk":
            continue
        steady = (steps >= steady_from) & (n_dead[name] > 0) & (n_dead["peer_topk"] > 0)
        out["speed_vs_peer"][name] = {
            "all_after_2": paired_speed(seconds[name], seconds["peer_topk"], steps >= 2),
            "steady_auxk_active": {**paired_speed(seconds[name], seconds["peer_topk"], steady),
                                   "from_step": steady_from}}
    return out


def run_size(data: BenchData, arms: dict[str, TrainSection], d_dict: int, variants: list[str], peer: bool,
             checkpoints: list[int], seed: int, steady_from: int) -> dict[str, Any]:
    """Build the contenders at one K (every variant under every settings arm), train them in lockstep,
    summarise. The peer takes the first arm's batch order, dead window and lr schedule."""
    update = {"d_dict": d_dict, "d_dict_sweep": [d_dict], "steps": max(checkpoints)}
    ours = [Ours(data, arm_cfg.model_copy(update=update), v, d_dict, seed, arm)
            for arm, arm_cfg in arms.items() for v in variants]
    cfg = next(iter(arms.values()))
    contenders: list[Contender] = list(ours)
    if peer:
        contenders.append(Peer(data, ours[0], d_dict, cfg.k, max(checkpoints), cfg.warmup_steps,
                               ours[0].trainer.dead_window, seed, cfg.lr_decay_start))
    raw = lockstep(contenders, data.held_out, checkpoints, log=lambda m: print(f"K={d_dict} {m}", flush=True))
    result = summarise(raw, steady_from)
    for c in contenders:
        result["contenders"][c.name]["lr"] = c.lr  # type: ignore[attr-defined]
    for o in ours:
        result["contenders"][o.name]["dead_window"] = o.trainer.dead_window
    return result


def bench_config(path: Path, overrides: list[str], k: int, batch: int, warmup: int,
                 decay_start: float = 1.0) -> TrainSection:
    """The config's train section with the benchmark's k, batch, warm-up and lr decay, no validation.
    The warm-up and decay come before `overrides`, so that an arm can set its own schedule."""
    schedule = [f"train.warmup_steps={warmup}", f"train.lr_decay_start={decay_start}"]
    cfg = load_config(path, [*schedule, *overrides]).train
    return cfg.model_copy(update={"k": k, "batch_size": batch,
                                  "eval_every": 10**9, "checkpoint_every": 10**9, "keep_best": False})


def parse_arm(text: str) -> tuple[str, list[str]]:
    """`NAME:train.a=1,train.b=2` -> (NAME, [overrides]); `NAME` alone is the config as it is."""
    name, _, overrides = text.partition(":")
    if not name or any(c in name for c in "=,@"):
        raise argparse.ArgumentTypeError(f"--arm {text!r}: expected NAME or NAME:train.key=value[,...]")
    return name, [o for o in overrides.split(",") if o]


def arm_configs(args: argparse.Namespace) -> dict[str, TrainSection]:
    """Our settings arms by name: each `--arm`'s overrides on top of `--set` (one unnamed arm without)."""
    arms = args.arm or [("", [])]
    return {name: bench_config(args.config, [*args.set, *extra], args.k, args.batch, args.warmup, args.decay_start)
            for name, extra in arms}


# ---- processes ------------------------------------------------------------------------------------
def peer_python(env: Path, source: Path | None) -> Path:
    """Python of a throwaway venv holding dictionary_learning (pip --no-deps) and the nnsight stub.

    `venv --system-site-packages` made from a venv sees the base interpreter's packages, not this
    venv's torch, so a .pth file adds this interpreter's site-packages after the venv's own. The venv
    is reused while its marker matches the pinned requirements.
    """
    requirements = [str(source)] if source is not None else list(PEER_REQUIREMENTS[:1])
    requirements += list(PEER_REQUIREMENTS[1:])
    marker = env / "stsae-peer.json"
    wanted = {"requirements": requirements, "parent": sys.prefix}
    python = env / "bin" / "python"
    if marker.is_file() and json.loads(marker.read_text()) == wanted and python.exists():
        return python
    shutil.rmtree(env, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env)], check=True)
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        Path(purelib, "zz_stsae_parent.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *requirements], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise StsaeError(f"--peer-env {env}: could not install {' '.join(requirements)} ({exc}); pass "
                         "--peer-source with a checkout of github:saprmarks/dictionary_learning") from None
    for module, text in PEER_STUBS.items():
        (env / "stubs" / module).mkdir(parents=True, exist_ok=True)
        (env / "stubs" / module / "__init__.py").write_text(text)
    marker.write_text(json.dumps(wanted))
    return python


def rerun_in_peer_env(args: argparse.Namespace, argv: list[str]) -> int:
    """Run this script again in the peer venv (`--child`), our source tree first on its path."""
    python = peer_python(args.peer_env, args.peer_source)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.peer_env / "stubs"), str(src)])}
    return subprocess.run([str(python), __file__, *argv, "--child"], env=env).returncode


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 250], help="checkpoint steps")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=10, help="linear lr warm-up steps (both trainers)")
    parser.add_argument("--decay-start", type=float, default=1.0,
                        help="fraction of the steps after which both trainers' lr decays linearly to 0 "
                        "(1: never; 0: from the end of warm-up)")
    parser.add_argument("--steady-from", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=["vanilla", "full"], choices=["vanilla", "full"])
    parser.add_argument("--no-peer", action="store_true", help="ours only, in this process")
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "default.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="train.KEY=VALUE",
                        help="override our config (repeatable)")
    parser.add_argument("--arm", action="append", type=parse_arm, default=[], metavar="NAME[:OVERRIDES]",
                        help="a settings arm of ours: NAME:train.key=value,... on top of --set; repeat to "
                             "train several side by side on the same batches (contender stsae_<variant>@NAME)")
    parser.add_argument("--n-train", type=int, default=65_536)
    parser.add_argument("--n-held", type=int, default=20_480)
    parser.add_argument("--run-dir", type=Path, default=None, help="train on this run's embeddings instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer-env", type=Path, default=Path(tempfile.gettempdir()) / "stsae-peer-env")
    parser.add_argument("--peer-source", type=Path, default=None,
                        help="install dictionary_learning from this checkout instead of the registry")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value if key != "set" else [*value, *args.set])
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("sae_peer_quick.json")
    if not 0 <= args.decay_start <= 1:
        parser.error(f"--decay-start {args.decay_start} must be in [0, 1] (0: from the end of warm-up)")
    if not 0 <= args.warmup < max(args.steps):
        parser.error(f"--warmup {args.warmup} must be below the last checkpoint step {max(args.steps)}")
    if min(args.sizes) < args.k:
        parser.error(f"--sizes: every dictionary size must be at least --k {args.k}")
    names = [name for name, _ in args.arm]
    if len(set(names)) != len(names):
        parser.error(f"--arm: names must be unique, got {names}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_peer and not args.child:
        return rerun_in_peer_env(args, argv)
    torch.set_num_threads(args.threads)
    arms = arm_configs(args)
    cfg = next(iter(arms.values()))
    data = run_embeddings(args.run_dir) if args.run_dir else mixture_embeddings(args.n_train, args.n_held, args.seed)
    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads, "data": describe(data),
        "settings": {"k": args.k, "batch_size": args.batch, "warmup_steps": args.warmup,
                     "decay_start": args.decay_start, "checkpoints": args.steps,
                     "steady_from": args.steady_from, "seed": args.seed, "config": str(args.config),
                     "overrides": args.set, "train": cfg.model_dump(mode="json"),
                     "arms": {name: extra for name, extra in args.arm},
                     "peer": None if args.no_peer else {"packages": list(PEER_REQUIREMENTS),
                                                        "version": importlib.metadata.version("dictionary-learning"),
                                                        "dead_window_tokens": "the first arm's, per K"}},
        "stsae_source": str(Path(stsae.__file__).resolve().parent),
        "sizes": {}}
    for d_dict in args.sizes:
        result["sizes"][f"K{d_dict}"] = run_size(data, arms, d_dict, args.variants, not args.no_peer, args.steps,
                                                 args.seed, args.steady_from)
        io.write_json(args.out, result)
    print(json.dumps({k: v["speed_vs_peer"] for k, v in result["sizes"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
