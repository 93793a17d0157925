"""Train one ST-SAE on WindowTripletDataset batches: resumable, deterministic, DDP-aware.

One `update` per step in the order of dictionary_learning's trainers: forward on the triplet batch →
backward → (DDP) sum gradients → remove the decoder-gradient component parallel to each atom →
clip → Adam step → renormalise the decoder. Learning rate: linear warm-up, constant, then linear
decay to 0 from `train.lr_decay_start` (dictionary_learning's schedule).

Exact resume: every random choice is derived from (seed, name, step) rather than drawn from a running
generator (batches: one permutation per epoch; L_div atom subset: one draw per step), so a checkpoint
only needs the step, the weights, Adam's moments, the dead-latent counters and the validation
bookkeeping; killed and resumed training ends with bit-identical weights on CPU in fp32.

DDP (torchrun; gloo on CPU): each rank takes a contiguous slice of the same global batch; every loss
is normalised by global quantities (row count, variance) so the ranks' shares sum to the single-process
loss, and gradients are summed with all_reduce. Renormalisation then acts on identical weights on
every rank, so the model equals the one-process model up to floating-point reassociation.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from stsae.config import ABLATIONS, LossWeights, TrainSection
from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import EMBEDDING_DIM
from stsae.errors import StsaeError
from stsae.models.stsae import STSAE, CheckpointError, Codes, read_safetensors, safetensors_bytes
from stsae.train.losses import (
    LossTerms,
    centred_sum_of_squares,
    l_auxk,
    l_div,
    l_rec,
    l_smooth,
    l_sp,
    l_stab,
)
from stsae.utils import io
from stsae.utils.dist import group_world
from stsae.utils.progress import progress
from stsae.utils.seeding import derive_seed, rng

log = logging.getLogger(__name__)

VARIANTS = ("full", *ABLATIONS)
CHECKPOINT_FORMAT = "stsae-train/1"
_VAL_CHUNK = 256


@dataclass(frozen=True)
class VariantSpec:
    """What an ablation changes: the loss weights and whether the decoder geometry is enforced."""

    weights: LossWeights
    renorm: bool


def variant_spec(cfg: TrainSection, variant: str) -> VariantSpec:
    """Loss weights of `variant`. `vanilla` keeps L_rec + L_sp only: for Top-K, where L_sp has no
    weight (k fixes the L0), that is L_rec + AuxK, i.e. a plain Top-K SAE."""
    if variant not in VARIANTS:
        raise StsaeError(f"unknown ST-SAE variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    weights = cfg.loss_weights
    zeroed = {"no_smooth": ("smooth",), "no_stab": ("stab",), "no_div": ("div",),
              "vanilla": ("div", "stab", "smooth")}.get(variant, ())
    return VariantSpec(weights.model_copy(update=dict.fromkeys(zeroed, 0.0)), variant != "no_renorm")


def train_row_sample(data: WindowTripletDataset, max_rows: int, seed: int) -> np.ndarray:
    """float32[N, 512] distinct train rows (both ends of every pair), at most `max_rows`, seeded."""
    rows = np.unique(data.pairs.ravel())
    if len(rows) > max_rows:
        rows = np.sort(rng(seed, "stsae-stats").choice(rows, max_rows, replace=False))
    return np.asarray(data.z[rows], dtype=np.float32)


class Trainer:
    """Trains one (variant, K, seed) model; `train()` runs to the end (or `until`), `result()` returns it.

    train / val: triplet datasets of the train and validation splits (val None: no model selection).
    checkpoint: a resumable training-state file (one safetensors file whose header holds the JSON
    state, so weights and state can never disagree); resumed when its settings match, else ignored.
    embeddings: provenance of the embeddings trained on (the extract stage's fingerprint); it is part of the
    settings, so a checkpoint written on other embeddings is never resumed.
    """

    def __init__(self, train: WindowTripletDataset, val: WindowTripletDataset | None, cfg: TrainSection,
                 variant: str, d_dict: int, seed: int, steps: int | None = None,
                 checkpoint: Path | None = None, embeddings: str | None = None):
        self.spec = variant_spec(cfg, variant)
        if len(train) == 0:
            raise StsaeError("train split has no temporal pairs (z_t, z_t+1); check the extract stage")
        self.world, self.rank = group_world()
        if cfg.batch_size % self.world:
            raise StsaeError(
                f"train.batch_size={cfg.batch_size} must be divisible by the world size {self.world}")
        self.train_data, self.val_data, self.cfg = train, val, cfg
        self.variant, self.d_dict, self.seed = variant, d_dict, seed
        self.total_steps = steps if steps is not None else cfg.steps
        self.checkpoint = checkpoint
        self.embeddings = embeddings
        init = torch.Generator().manual_seed(derive_seed(seed, "stsae-init", d_dict))
        self.model = STSAE(EMBEDDING_DIM, d_dict, cfg.activation, cfg.k, cfg.sparse_decode, generator=init)
        self.model.init_from_data(train_row_sample(train, cfg.stats_max_rows, seed), init, cfg.init,
                                   cfg.init_fit_scale)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=True)
        self.since_fired = torch.zeros(d_dict, dtype=torch.int64)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.best_val = math.inf
        self.best_step = -1
        self.best_state: dict[str, Tensor] | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.last_train: dict[str, float] = {}
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self.val_ids = self._val_subset()
        if checkpoint is not None and checkpoint.is_file():
            self._load_checkpoint(checkpoint)

    # ---- deterministic data order ---------------------------------------------------------------
    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            perm = rng(self.seed, "stsae-batches", epoch).permutation(len(self.train_data))
            self._epoch_cache = (epoch, perm)
        return self._epoch_cache[1]

    def batch_ids(self, step: int) -> np.ndarray:
        """Pair ids of the global batch of `step`: positions [step·B, (step+1)·B) of a stream of epochs."""
        n, b = len(self.train_data), self.cfg.batch_size
        positions = np.arange(step * b, (step + 1) * b, dtype=np.int64)
        out = np.empty(b, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self._epoch_perm(int(epoch))[positions[mask] % n]
        return out

    def _val_subset(self) -> np.ndarray:
        if self.val_data is None or len(self.val_data) == 0:
            return np.zeros(0, dtype=np.int64)
        n = len(self.val_data)
        take = min(n, self.cfg.val_triplets)
        return np.sort(rng(self.seed, "stsae-val").choice(n, take, replace=False))

    def lr_at(self, step: int) -> float:
        """Warm-up (linear from lr/warmup), constant, then linear decay to 0 over the last part."""
        cfg = self.cfg
        factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        decay_start = int(cfg.lr_decay_start * self.total_steps)
        if step >= decay_start and self.total_steps > decay_start:
            factor = min(factor, (self.total_steps - step) / (self.total_steps - decay_start))
        return cfg.lr_for(self.d_dict) * factor

    # ---- distributed helpers --------------------------------------------------------------------
    def _sum(self, value: Tensor) -> Tensor:
        """Sum of a detached tensor over ranks (identity in one process)."""
        if self.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
        return value

    def _centred_ss(self, x: Tensor, n_global: int) -> Tensor:
        """Σ‖x − x̄‖² over the global batch (x̄ the global mean), without gradient."""
        if self.world == 1:
            return centred_sum_of_squares(x)
        x = x.detach().double()
        s1 = self._sum(x.sum(0))
        s2 = self._sum(x.pow(2).sum())
        return (s2 - s1.pow(2).sum() / n_global).float()

    # ---- one step -------------------------------------------------------------------------------
    def _loss_terms(self, z_t: Tensor, z_t1: Tensor, z_aug: Tensor, n_global: int,
                    dead_mask: Tensor | None, div_sample: Tensor | None) -> tuple[LossTerms, Tensor]:
        """This rank's share of every loss term and the bool[K] latents that fired on z_t."""
        model, weights = self.model, self.spec.weights
        b = z_t.shape[0]
        parts = [z_t] + ([z_t1] if weights.smooth > 0 else []) + ([z_aug] if weights.stab > 0 else [])
        x = model.standardise(torch.cat(parts))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
            codes = model.codes(x, dead_mask, self.cfg.aux_k, aux_rows=b, dense=False)
            x_hat = model.decode_codes(codes, rows=b).float()
        x_t = x[:b]
        f_t, *others = (self._dense(codes, start, start + b) for start in range(0, x.shape[0], b))
        zero = x.new_zeros(())
        rec = l_rec(x_t, x_hat, self._centred_ss(x_t, n_global))
        sp = l_sp(f_t, n_global)
        div = l_div(model.W_dec, div_sample) / self.world if weights.div > 0 else zero
        smooth = l_smooth(f_t, others.pop(0), n_global) if weights.smooth > 0 else zero
        stab = l_stab(f_t, others.pop(0), n_global) if weights.stab > 0 else zero
        auxk = zero
        if codes.aux_idx is not None and codes.aux_vals is not None:
            residual = x_t - x_hat
            aux_recon = model.sparse_combination(codes.aux_idx, codes.aux_vals)
            auxk = l_auxk(residual, aux_recon, self._centred_ss(residual, n_global))
        fired = (f_t > 0).any(0)
        return LossTerms(rec, sp, div, stab, smooth, auxk), fired

    def _dense(self, codes: Codes, start: int, stop: int) -> Tensor:
        """float32[stop − start, K] dense codes of rows [start, stop)."""
        if codes.idx is not None and codes.vals is not None:
            return self.model.dense_codes(codes.idx[start:stop], codes.vals[start:stop])
        assert codes.f is not None
        return codes.f[start:stop].float()

    def _div_sample(self, step: int) -> Tensor | None:
        if self.spec.weights.div == 0 or self.d_dict <= self.cfg.div_sample:
            return None
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "stsae-div", step))
        return torch.randperm(self.d_dict, generator=gen)[: self.cfg.div_sample]

    def update(self) -> dict[str, float]:
        """One optimizer step on the global batch of `self.step`; returns the global loss terms."""
        cfg, model = self.cfg, self.model
        ids = self.batch_ids(self.step)
        share = cfg.batch_size // self.world
        z_t, z_t1, z_aug = self.train_data.batch(ids[self.rank * share:(self.rank + 1) * share])
        use_auxk = cfg.activation == "topk" and self.spec.weights.auxk > 0
        dead_mask = self.since_fired >= cfg.dead_after_samples if use_auxk else None
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        model.train()
        div_sample = self._div_sample(self.step)
        terms, fired = self._loss_terms(z_t, z_t1, z_aug, cfg.batch_size, dead_mask, div_sample)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total(self.spec.weights, cfg.activation).backward()
        if self.world > 1:
            for param in model.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
            fired = self._sum(fired.to(torch.int32)) > 0
        if self.spec.renorm:
            model.remove_parallel_gradient()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.spec.renorm:
            model.renormalize_decoder()
        self.since_fired += cfg.batch_size
        self.since_fired[fired] = 0
        self.step += 1
        values = self._sum(torch.stack([t.detach().float() for t in terms]))
        result = dict(zip((f"l_{name}" for name in LossTerms._fields), values.tolist(), strict=True))
        result["loss"] = float(LossTerms(*values).total(self.spec.weights, cfg.activation))
        result["dead_fraction"] = float((self.since_fired >= cfg.dead_after_samples).float().mean())
        self.last_train = result
        return result

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Every loss term on the fixed validation subset (AuxK excluded), plus EV, L0 and total."""
        assert self.val_data is not None
        model = self.model.eval()
        sums = dict.fromkeys(("sse", "sp", "stab", "smooth", "l0"), 0.0)
        s1 = torch.zeros(EMBEDDING_DIM, dtype=torch.float64)
        s2 = 0.0
        for start in range(0, len(self.val_ids), _VAL_CHUNK):
            z_t, z_t1, z_aug = self.val_data.batch(self.val_ids[start:start + _VAL_CHUNK])
            b = z_t.shape[0]
            x = model.standardise(torch.cat([z_t, z_t1, z_aug]))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cfg.bf16):
                codes = model.codes(x)
                x_hat = model.decode_codes(codes, rows=b).float()
            f = self._dense(codes, 0, x.shape[0])
            f_t = f[:b]
            x_t = x[:b].double()
            sums["sse"] += float((x_t - x_hat.double()).pow(2).sum())
            s1 += x_t.sum(0)
            s2 += float(x_t.pow(2).sum())
            sums["sp"] += float(f_t.abs().sum())
            sums["smooth"] += float((f_t - f[b:2 * b]).abs().sum())
            sums["stab"] += float((f_t - f[2 * b:]).abs().sum())
            sums["l0"] += float((f_t > 0).sum())
        n = len(self.val_ids)
        total_var = s2 - float(s1.pow(2).sum()) / n
        zero = torch.zeros(())
        terms = LossTerms(torch.tensor(sums["sse"] / total_var), torch.tensor(sums["sp"] / n),
                          l_div(model.W_dec), torch.tensor(sums["stab"] / n),
                          torch.tensor(sums["smooth"] / n), zero)
        result = {f"val_{k}": v for k, v in terms.as_floats().items() if k != "l_auxk"}
        result["val_loss"] = float(terms.total(self.spec.weights, self.cfg.activation))
        result["val_ev"] = 1.0 - result["val_l_rec"]
        result["val_l0"] = sums["l0"] / n
        result["step"] = self.step
        return result

    def _after_eval(self, metrics: dict[str, float]) -> None:
        self.history.append(metrics)
        if metrics["val_loss"] < self.best_val:
            self.best_val, self.best_step, self.bad_evals = metrics["val_loss"], self.step, 0
            if self.cfg.keep_best:
                self.best_state = self.model.tensors()
        else:
            self.bad_evals += 1
            if self.cfg.patience and self.bad_evals >= self.cfg.patience:
                self.stopped_early = True
                log.info("%s: early stop at step %d (best step %d)", self.name, self.step, self.best_step)

    @property
    def name(self) -> str:
        return f"stsae-{self.variant}-K{self.d_dict}-s{self.seed}"

    @property
    def finished(self) -> bool:
        return self.stopped_early or self.step >= self.total_steps

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> None:
        """Run steps up to `until` (default: the end), evaluating and checkpointing on schedule."""
        stop = self.total_steps if until is None else min(until, self.total_steps)
        has_val = len(self.val_ids) > 0
        t0, start_step = time.perf_counter(), self.step
        bar = progress(stop - self.step, self.name, "step")
        while not self.finished and self.step < stop:
            self.update()
            bar.update(1)
            if has_val and (self.step % self.cfg.eval_every == 0 or self.step == self.total_steps):
                self._after_eval(self.evaluate())
            if self.checkpoint is not None and (self.step % self.cfg.checkpoint_every == 0 or self.finished):
                self.save_checkpoint(self.checkpoint)
        bar.close()
        seconds = time.perf_counter() - t0
        if self.step > start_step:
            rate = (self.step - start_step) * self.cfg.batch_size / max(seconds, 1e-9)
            log.info("%s: %d steps in %.1f s (%.0f triplets/s), %s", self.name, self.step - start_step,
                     seconds, rate, {k: round(v, 4) for k, v in self.last_train.items()})
            self.last_train["triplets_per_s"] = rate

    def result(self) -> tuple[STSAE, dict[str, Any]]:
        """The trained model (best validation weights when train.keep_best) and its metrics."""
        model = self.model
        if self.cfg.keep_best and self.best_state is not None:
            model = copy.deepcopy(self.model)
            with torch.no_grad():
                for name, value in self.best_state.items():
                    getattr(model, name).copy_(value)
        model.eval()
        best = next((h for h in self.history if h["step"] == self.best_step), None)
        metrics: dict[str, Any] = {
            "steps": self.total_steps, "steps_run": self.step, "stopped_early": self.stopped_early,
            "best_step": self.best_step if best is not None else None,
            "val": best or (self.history[-1] if self.history else None),
            "train_last": self.last_train, "history": self.history,
            **self.dead_latents(),
        }
        return model, metrics

    def dead_latents(self) -> dict[str, Any]:
        """Dead latents as Gao et al. count them: no firing on the last N training samples (N =
        train.dead_after_samples, stated beside the fraction). Before N samples were seen no latent
        can qualify, so the fraction is None rather than a reassuring 0."""
        n, seen = self.cfg.dead_after_samples, self.step * self.cfg.batch_size
        fraction = float((self.since_fired >= n).float().mean()) if seen >= n else None
        return {"dead_fraction_train": fraction, "dead_window_samples": n, "samples_seen": seen}

    # ---- checkpoints ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (else it is stale and ignored)."""
        return {"variant": self.variant, "d_dict": self.d_dict, "seed": self.seed, "steps": self.total_steps,
                "train_config": self.cfg.model_dump(mode="json"), "embeddings": self.embeddings,
                "n_train_pairs": len(self.train_data),
                "n_val_pairs": 0 if self.val_data is None else len(self.val_data), "world_size": self.world}

    def save_checkpoint(self, path: Path) -> None:
        """Atomically write the full training state (rank 0 only)."""
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.tensors().items()}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        for i, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"opt.{i}.{k}": v.detach().clone() for k, v in state.items()})
        tensors["since_fired"] = self.since_fired.clone()
        state = {"settings": self.settings(), "step": self.step, "history": self.history,
                 "best_val": self.best_val if math.isfinite(self.best_val) else None,
                 "best_step": self.best_step, "bad_evals": self.bad_evals,
                 "stopped_early": self.stopped_early, "last_train": self.last_train,
                 "rng": {"scheme": "derive_seed(seed, name, step|epoch) per draw; no running state",
                         "seed": self.seed},
                 "optimizer": {"type": "Adam", "param_groups": self.optimizer.state_dict()["param_groups"]}}
        metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state)}
        io.write_bytes(path, safetensors_bytes(tensors, metadata))

    def _load_checkpoint(self, path: Path) -> None:
        tensors, header = read_safetensors(path)
        if header.get("format") != CHECKPOINT_FORMAT or "state" not in header:
            raise CheckpointError(f"{path}: not an ST-SAE training checkpoint; delete it to start over")
        state = json.loads(header["state"])
        if state["settings"] != self.settings():
            log.warning("%s: checkpoint written with other settings; ignored, starting fresh", path)
            return
        try:
            with torch.no_grad():
                for name, value in self.model.tensors().items():
                    getattr(self.model, name).copy_(tensors[f"model.{name}"].reshape(value.shape))
            opt_state = self.optimizer.state_dict()
            for i in range(len(opt_state["param_groups"][0]["params"])):
                keys = [k for k in tensors if k.startswith(f"opt.{i}.")]
                if keys:
                    opt_state["state"][i] = {k.split(".", 2)[2]: tensors[k] for k in keys}
            self.optimizer.load_state_dict(opt_state)
            self.since_fired = tensors["since_fired"].clone()
            best = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("best.")}
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: inconsistent training checkpoint ({exc}); delete it") from None
        self.best_state = best or None
        self.step = state["step"]
        self.history = state["history"]
        self.best_val = math.inf if state["best_val"] is None else state["best_val"]
        self.best_step, self.bad_evals = state["best_step"], state["bad_evals"]
        self.stopped_early, self.last_train = state["stopped_early"], state["last_train"]
        log.info("%s: resumed from %s at step %d", self.name, path, self.step)


def fit_stsae(train: WindowTripletDataset, val: WindowTripletDataset | None, cfg: TrainSection, variant: str,
              d_dict: int, seed: int, checkpoint: Path | None = None,
              steps: int | None = None, embeddings: str | None = None) -> tuple[STSAE, dict[str, Any]]:
    """Train (or resume, or just reload a finished checkpoint of) one ST-SAE; returns (model, metrics).

    Reusable for refits (e.g. 50 % patient subsamples): pass the subsample's datasets and a `steps`
    override. `checkpoint`, when given, is written every train.checkpoint_every steps and at the end;
    the caller deletes it once it has saved the model; `embeddings` (the extract fingerprint) must match
    for it to be resumed. metrics: steps, steps_run, stopped_early,
    best_step, val (validation terms of the selected weights), train_last, history, dead_fraction_train
    (None before dead_window_samples samples were seen), dead_window_samples, samples_seen.
    """
    trainer = Trainer(train, val, cfg, variant, d_dict, seed, steps=steps, checkpoint=checkpoint,
                      embeddings=embeddings)
    trainer.train()
    model, metrics = trainer.result()
    if model.stats is not None:
        metrics["input_mean_norm_over_std"] = model.stats.mean_norm_over_std
        metrics["effective_rank"] = model.stats.effective_rank
    return model, metrics
