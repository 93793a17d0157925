"""Train ST-SAEs on WindowTripletDataset batches, several of one K at once: resumable, deterministic, DDP-aware.

Fused training: the demo grid's models are small (K=128), where a step is mostly per-op overhead, so
`FusedTrainer` trains M models of one dictionary size as one `StackedSTSAE` (weights [M, K, D], batched
GEMMs, per-model Top-K): every op runs once for all M, and each member still follows exactly its own
recipe (see the class). `Trainer` is the one-model case of the same code.

One `update` per step in the order of dictionary_learning's trainers: forward on the triplet batch →
backward → (DDP) sum gradients → remove the decoder-gradient component parallel to each atom →
clip → Adam step → renormalise the decoder → (lazy Adam, train.lazy_adam) put back the weights and moments
of the latents that took no gradient. Learning rate: linear warm-up, constant, then linear
decay to 0 from `train.lr_decay_start` (dictionary_learning's schedule), never before the end of the
warm-up, so that 0 means "decay straight from the peak" whatever the step counts.

Exact resume: every random choice is derived from (seed, name, step) rather than drawn from a running
generator (batches: one permutation per epoch; L_div atom subset: one draw per step), so a checkpoint
only needs the step, the weights, Adam's moments, the dead-latent counters and the validation
bookkeeping (of every member: one checkpoint per group); killed and resumed training ends with
bit-identical weights on CPU in fp32.

DDP (torchrun; gloo on CPU): each rank takes a contiguous slice of the same global batch; every loss
is normalised by global quantities (row count, variance) so the ranks' shares sum to the single-process
loss, and gradients are summed with all_reduce. Renormalisation then acts on identical weights on
every rank, so the model equals the one-process model up to floating-point reassociation.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.adam import adam

from stsae.config import ABLATIONS, LossWeights, TrainSection
from stsae.data.dataset import WindowTripletDataset
from stsae.data.store import EMBEDDING_DIM
from stsae.errors import StsaeError
from stsae.models.stsae import (
    STSAE,
    TENSOR_NAMES,
    CheckpointError,
    ForwardOutput,
    StackedSTSAE,
    fired_latents,
    input_statistics,
    read_safetensors,
    safetensors_bytes,
)
from stsae.pipeline.code_identity import code_digest
from stsae.train.losses import (
    LossTerms,
    PartCodes,
    SparseCodes,
    auxk_scale,
    centred_sum_of_squares,
    l_auxk,
    l_div,
    l_rec,
    l_smooth,
    l_sp,
    l_stab,
    term_weights,
)
from stsae.utils import io
from stsae.utils.dist import group_world
from stsae.utils.progress import progress
from stsae.utils.seeding import derive_seed, rng

log = logging.getLogger(__name__)

VARIANTS = ("full", *ABLATIONS)
CHECKPOINT_FORMAT = "stsae-train/2"  # /1 held one model and torch.optim.Adam's state dict
_VAL_CHUNK = 256
_CPU = torch.device("cpu")
_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as before the stacked optimizer
_EPS = 1e-8
LATENT_PARAMS = ("W_enc", "b_enc", "W_dec")  # the stack's parameters indexed [M, K, ...] by latent
# Top-K steps compute L_smooth / L_stab / L_sp and the fired latents from the k active codes
# (`SparseCodes`) once K is at least this many times k, else from codes scattered into dense [M, T, B, K]:
# the same weights bit for bit either way. Paired rounds on the 2-core CPU (`benchmarks/bench_train.py
# --codes-ab`, full variant, k = 16, one thread): the dense step took 0.94x / 0.99x the sparse step's time
# at K = 128 / 256 and 1.05x / 1.15x / 1.23x / 1.30x / 1.34x at K = 512 / 1024 / 2048 / 4096 / 8192.
SPARSE_CODE_LOSSES_MIN_RATIO = 32


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


def encoded_parts(cfg: TrainSection, variant: str) -> tuple[str, ...]:
    """The triplet parts besides z_t that `variant`'s loss reads: "smooth" (z_t+1) and/or "stab" (z_aug_t).

    Why it matters: a fused group encodes every part that any member reads, for every member, so a
    vanilla model fused with `full` ones would pay for three encodes per triplet instead of one;
    `stsae.stages.train` fuses only models reading the same parts, and `stsae.train.grid.training_cost`
    counts the encodes."""
    weights = variant_spec(cfg, variant).weights
    return tuple(name for name in ("smooth", "stab") if getattr(weights, name) > 0)


SCHEDULING_KEYS = frozenset({"fused_grid", "parallel", "workers"})


def model_recipe(cfg: TrainSection) -> dict[str, Any]:
    """The train settings that shape a model's weights: all but SCHEDULING_KEYS, which only decide which
    models train together or where (a member of a group trains exactly as it would alone, a grid share
    on its rank as in one process), so switching them retrains nothing."""
    return cfg.model_dump(mode="json", exclude=set(SCHEDULING_KEYS))


TRAINING_CODE_MODULE = "stsae.stages.train"


def training_code() -> str:
    """Digest of the code that trains a model: the train stage and every stsae module it imports
    (`stsae.pipeline.code_identity`). Part of a finished model's sidecar and of a checkpoint's settings:
    the stage fingerprint alone reruns the stage after a code edit, but its per-model check would then
    keep every model the old code trained."""
    return code_digest(TRAINING_CODE_MODULE)


def _part_codes(out: ForwardOutput, part: int) -> PartCodes:
    """The codes of one triplet part of a stacked forward pass: dense [M, B, K] when the pass built them,
    else the Top-K codes' active entries."""
    if out.f is not None:
        return out.f[:, part].float()
    assert out.idx is not None and out.vals is not None
    return SparseCodes(out.idx[:, part], out.vals[:, part])


def train_rows(data: WindowTripletDataset, max_rows: int, seed: int) -> np.ndarray:
    """int64[N] sorted distinct train rows (both ends of every pair), at most `max_rows`, seeded."""
    rows = np.unique(data.pairs.ravel())
    if len(rows) > max_rows:
        rows = np.sort(rng(seed, "stsae-stats").choice(rows, max_rows, replace=False))
    return rows


@dataclass(frozen=True)
class Member:
    """One model of a fused group: its variant, seed and data (members may train on different data,
    e.g. evaluate's patient-subsample refits)."""

    variant: str
    seed: int
    train: WindowTripletDataset
    val: WindowTripletDataset | None = None


@dataclass
class MemberProgress:
    """One member's validation bookkeeping: its own early stopping and best weights."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val: float = math.inf
    best_step: int = -1
    best_state: dict[str, Tensor] | None = None
    bad_evals: int = 0
    stopped_at: int | None = None
    last_train: dict[str, float] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        """JSON-able state (the best weights travel as tensors beside it)."""
        return {"history": self.history, "best_val": self.best_val if math.isfinite(self.best_val) else None,
                "best_step": self.best_step, "bad_evals": self.bad_evals, "stopped_at": self.stopped_at,
                "last_train": self.last_train}

    @classmethod
    def from_state(cls, state: dict[str, Any], best: dict[str, Tensor] | None) -> MemberProgress:
        best_val = math.inf if state["best_val"] is None else state["best_val"]
        return cls(state["history"], best_val, state["best_step"], best, state["bad_evals"], state["stopped_at"],
                   state["last_train"])


class FusedTrainer:
    """Trains M models of one dictionary size K at once as one `StackedSTSAE`; `train()` runs to the end
    (or `until`), `result(i)` returns member i.

    Every member keeps what it would have alone: its initialisation, batch order (from its seed and
    its own data), loss weights (a zero weight gives exactly zero gradient), decoder renormalisation
    (off for no_renorm), gradient-norm clip, Adam moments, dead-latent counters and AuxK selection,
    validation subset, early stopping and best weights. A member that stopped early is left out of
    the optimizer step and the renormalisation, so its weights stop changing. `Trainer` is the case M = 1.

    checkpoint: one resumable training-state file for the whole group (a safetensors file whose
    header holds the JSON state, so weights and state can never disagree); resumed when its settings
    (members included) match, else ignored. embeddings: provenance of the embeddings trained on (the
    extract stage's fingerprint), part of the settings. device: where every tensor lives.
    distributed: join the process group's DDP when there is one (False: this process trains the group
    alone, e.g. its share of the grid under train.parallel=grid).
    """

    def __init__(self, members: Sequence[Member], cfg: TrainSection, d_dict: int, steps: int | None = None,
                 checkpoint: Path | None = None, embeddings: str | None = None,
                 device: torch.device = _CPU, distributed: bool = True):
        if not members:
            raise StsaeError("a fused training group needs at least one model")
        if any(len(m.train) == 0 for m in members):
            raise StsaeError("train split has no temporal pairs (z_t, z_t+1); check the extract stage")
        self.world, self.rank = group_world() if distributed else (1, 0)
        if cfg.batch_size % self.world:
            raise StsaeError(
                f"train.batch_size={cfg.batch_size} must be divisible by the world size {self.world}")
        self.members, self.cfg, self.d_dict, self.device = list(members), cfg, d_dict, device
        self.total_steps = steps if steps is not None else cfg.steps
        self.checkpoint, self.embeddings = checkpoint, embeddings
        specs = [variant_spec(cfg, m.variant) for m in self.members]
        self.stack = StackedSTSAE(self._initial_models()).to(device)
        self.weights_MT = torch.tensor([term_weights(s.weights, cfg.activation) for s in specs])
        self._weights_on_device = self.weights_MT.to(device)
        self.renorm = torch.tensor([s.renorm for s in specs], device=device)
        self.use_auxk = self.weights_MT[:, LossTerms._fields.index("auxk")].to(device) > 0
        self.base_lr = [cfg.lr_for(d_dict)] * len(self.members)
        params = dict(self.stack.named_parameters())
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}
        self.adam_steps = torch.zeros(len(self.members), len(params), device=device)
        self.since_fired = torch.zeros(len(self.members), d_dict, dtype=torch.int64, device=device)
        self.dead_window = cfg.dead_window_for(d_dict)
        self.step = 0
        self.progress = [MemberProgress() for _ in self.members]
        self._epoch_cache: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
        self.val_ids = [self._val_subset(m) for m in self.members]
        self.parts, self.uses_div = self._plan_terms()
        self.sparse_code_losses = cfg.activation == "topk" and d_dict >= SPARSE_CODE_LOSSES_MIN_RATIO * cfg.k
        if checkpoint is not None and checkpoint.is_file():
            self._load_checkpoint(checkpoint)

    def _plan_terms(self) -> tuple[dict[str, int], bool]:
        """Which triplet parts the group encodes ({"smooth": index of z_t+1, "stab": index of z_aug_t},
        z_t being part 0) and whether it computes L_div: whatever some member weighs."""
        read = {part for member in self.members for part in encoded_parts(self.cfg, member.variant)}
        parts: dict[str, int] = {}
        for name in ("smooth", "stab"):
            if name in read:
                parts[name] = 1 + len(parts)
        return parts, bool(self.weights_MT[:, LossTerms._fields.index("div")].amax() > 0)

    def _initial_models(self) -> list[STSAE]:
        """Every member's starting weights. Members whose train rows are the same (one dataset, and the
        same seeded sample when it is subsampled) share one read of the rows and one pass of input
        statistics, released before the next such group is read, so peak memory stays one sample."""
        groups: dict[tuple[int, bytes], tuple[np.ndarray, list[int]]] = {}
        for i, member in enumerate(self.members):
            rows = train_rows(member.train, self.cfg.stats_max_rows, member.seed)
            groups.setdefault((id(member.train), rows.tobytes()), (rows, []))[1].append(i)
        models: dict[int, STSAE] = {}
        for rows, sharing in groups.values():
            z = self.members[sharing[0]].train.windows(rows)
            statistics = input_statistics(z)
            for i in sharing:
                models[i] = self._initial_model(self.members[i], z, statistics)
            stats = models[sharing[0]].stats
            if stats is not None:
                log.info("train embeddings: ‖μ‖/‖σ‖ = %.2f, effective rank = %.1f of %d (%d rows; %d model(s))",
                         stats.mean_norm_over_std, stats.effective_rank, EMBEDDING_DIM, stats.n_rows, len(sharing))
        return [models[i] for i in range(len(self.members))]

    def _initial_model(self, member: Member, z: np.ndarray, statistics: tuple[np.ndarray, np.ndarray]) -> STSAE:
        """Member's starting weights from its train rows z (the windows of `train_rows`) and their
        `input_statistics`, exactly as a model trained alone starts."""
        cfg = self.cfg
        init = torch.Generator().manual_seed(derive_seed(member.seed, "stsae-init", self.d_dict))
        model = STSAE(EMBEDDING_DIM, self.d_dict, cfg.activation, cfg.k, cfg.sparse_decode_for(self.d_dict),
                      generator=init)
        model.init_from_data(z, init, cfg.init, cfg.init_fit_scale, statistics=statistics)
        return model

    # ---- deterministic data order ---------------------------------------------------------------
    def _epoch_perm(self, i: int, epoch: int) -> np.ndarray:
        """Member i's permutation of its train pairs for `epoch`. It depends only on the seed and the
        number of pairs, so members agreeing on both share one cached copy."""
        member = self.members[i]
        key = (member.seed, len(member.train))
        cached = self._epoch_cache.get(key)
        if cached is None or cached[0] != epoch:
            cached = (epoch, rng(member.seed, "stsae-batches", epoch).permutation(len(member.train)))
            self._epoch_cache[key] = cached
        return cached[1]

    def batch_ids(self, i: int, step: int) -> np.ndarray:
        """Member i's pair ids of the global batch of `step`: positions [step·B, (step+1)·B) of a stream
        of epochs (one seeded permutation of its train pairs per epoch)."""
        n, b = len(self.members[i].train), self.cfg.batch_size
        positions = np.arange(step * b, (step + 1) * b, dtype=np.int64)
        out = np.empty(b, dtype=np.int64)
        for epoch in np.unique(positions // n):
            mask = positions // n == epoch
            out[mask] = self._epoch_perm(i, int(epoch))[positions[mask] % n]
        return out

    def _batch(self, step: int) -> Tensor:
        """This rank's share of every member's batch, float32[M, T, B, D] on the device: the triplet parts
        the group uses (z_t, then z_t+1 and z_aug_t if some member's loss needs them). Members of one seed
        and dataset share a batch, gathered once; each part is copied once, straight into its slot."""
        share = self.cfg.batch_size // self.world
        gathered: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}
        used = (0, *(1 if name == "smooth" else 2 for name in self.parts))
        out = torch.empty(len(self.members), len(used), share, EMBEDDING_DIM)
        for i, member in enumerate(self.members):
            key = (id(member.train), member.seed)
            if key not in gathered:
                ids = self.batch_ids(i, step)[self.rank * share:(self.rank + 1) * share]
                gathered[key] = member.train.batch(ids)
            for slot, part in enumerate(used):
                out[i, slot] = gathered[key][part]
        return out.to(self.device, non_blocking=True)

    def _val_subset(self, member: Member) -> np.ndarray:
        if member.val is None or len(member.val) == 0:
            return np.zeros(0, dtype=np.int64)
        n = len(member.val)
        take = min(n, self.cfg.val_triplets)
        return np.sort(rng(member.seed, "stsae-val").choice(n, take, replace=False))

    def lr_at(self, step: int) -> float:
        """Warm-up (linear from lr/warmup), constant, then linear decay to 0 over the last part."""
        return self.cfg.lr_for(self.d_dict) * self._lr_factor(step)

    def _lr_factor(self, step: int) -> float:
        cfg = self.cfg
        factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        decay_start = max(int(cfg.lr_decay_start * self.total_steps), cfg.warmup_steps)
        if step >= decay_start and self.total_steps > decay_start:
            factor = min(factor, (self.total_steps - step) / (self.total_steps - decay_start))
        return factor

    # ---- distributed helpers --------------------------------------------------------------------
    def _sum(self, value: Tensor) -> Tensor:
        """Sum of a detached tensor over ranks (identity in one process)."""
        if self.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
        return value

    def _centred_ss(self, x: Tensor, n_global: int) -> Tensor:
        """Σ‖x − x̄‖² per member over the global batch (x: float32[M, B, D], x̄ the global mean): [M]."""
        if self.world == 1:
            return centred_sum_of_squares(x)
        x = x.detach().double()
        s1 = self._sum(x.sum(-2))
        s2 = self._sum(x.pow(2).sum((-2, -1)))
        return (s2 - s1.pow(2).sum(-1) / n_global).float()

    # ---- one step -------------------------------------------------------------------------------
    def _loss_terms(self, z_MTBD: Tensor, n_global: int, dead_mask: Tensor | None,
                    div_sample: Tensor | None) -> tuple[LossTerms, Tensor]:
        """This rank's share of every member's loss terms ([M] each) and the bool[M, K] latents that
        fired on z_t. Terms a member does not weigh are still computed when another member needs them;
        its zero weight then gives them exactly zero gradient."""
        x_MTBD = self.stack.standardise_(z_MTBD)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            out = self.stack(x_MTBD, dead_mask, self.cfg.aux_k, self.cfg.auxk_code,
                             dense_codes=not self.sparse_code_losses)
        x_t_MBD, x_hat_MBD, f_t = x_MTBD[:, 0], out.x_hat.float(), _part_codes(out, 0)
        zero = x_t_MBD.new_zeros(len(self.members))
        rec = l_rec(x_t_MBD, x_hat_MBD, self._centred_ss(x_t_MBD, n_global))
        sp = l_sp(f_t, n_global)
        div = l_div(self.stack.W_dec, div_sample) / self.world if self.uses_div else zero
        smooth = l_smooth(f_t, _part_codes(out, self.parts["smooth"]), n_global) if "smooth" in self.parts else zero
        stab = l_stab(f_t, _part_codes(out, self.parts["stab"]), n_global) if "stab" in self.parts else zero
        auxk = zero
        if out.codes.aux_idx is not None and dead_mask is not None:
            residual_MBD = x_t_MBD - x_hat_MBD
            aux_MBD = self.stack.aux_reconstruction(out.codes)
            scale_M = None
            if self.cfg.auxk_fit_scale:
                with torch.no_grad():
                    scale_M = auxk_scale(self._sum((residual_MBD * aux_MBD).sum((-2, -1))),
                                         self._sum(aux_MBD.pow(2).sum((-2, -1))))
            auxk = l_auxk(residual_MBD, aux_MBD, self._centred_ss(residual_MBD, n_global), scale_M) * dead_mask.any(1)
        fired = fired_latents(f_t.idx, f_t.vals, self.d_dict) if isinstance(f_t, SparseCodes) else (f_t > 0).any(1)
        return LossTerms(rec, sp, div, stab, smooth, auxk), fired

    def _div_sample(self, step: int) -> Tensor | None:
        """int64[M, div_sample]: each member's L_div atom subset of `step` (None: all pairs)."""
        if not self.uses_div or self.d_dict <= self.cfg.div_sample:
            return None
        draws = []
        for member in self.members:
            gen = torch.Generator().manual_seed(derive_seed(member.seed, "stsae-div", step))
            draws.append(torch.randperm(self.d_dict, generator=gen)[: self.cfg.div_sample])
        return torch.stack(draws).to(self.device)

    def active(self) -> list[bool]:
        """Members still training (not stopped early)."""
        return [p.stopped_at is None for p in self.progress]

    def _clip_gradients(self) -> None:
        """Each member's gradient scaled to global norm ≤ train.grad_clip over all its parameters
        (torch's clip_grad_norm_, per member)."""
        grads = [p.grad for p in self.stack.parameters() if p.grad is not None]
        norms_PM = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])
        coef_M = (self.cfg.grad_clip / (torch.linalg.vector_norm(norms_PM, dim=0) + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coef_M.reshape(-1, *(1,) * (grad.ndim - 1)))

    def _adam_step(self, active: list[bool]) -> None:
        """torch's fused Adam on every active member's slices. Adam is elementwise, so the stack holds M
        independent Adams; members sharing a learning rate take one call."""
        by_lr: dict[float, list[int]] = {}
        for i, on in enumerate(active):
            if on:
                by_lr.setdefault(self.base_lr[i] * self._lr_factor(self.step), []).append(i)
        params = dict(self.stack.named_parameters())
        for lr, ids in by_lr.items():
            slots = [(name, i) for i in ids for name in params]
            grads = [params[name].grad for name, _ in slots]
            if any(g is None for g in grads):
                continue
            adam([params[name].data[i] for name, i in slots], [g[i] for g, (_, i) in zip(grads, slots, strict=True)],
                 [self.exp_avg[name][i] for name, i in slots], [self.exp_avg_sq[name][i] for name, i in slots], [],
                 [self.adam_steps[i, j] for i in ids for j in range(len(params))], fused=True, amsgrad=False,
                 beta1=_BETAS[0], beta2=_BETAS[1], lr=lr, weight_decay=0.0, eps=_EPS, maximize=False)

    def _hold_idle_latents(self) -> list[tuple[tuple[Tensor, ...], Tensor, tuple[Tensor, ...]]]:
        """Lazy Adam (train.lazy_adam): per latent-indexed parameter, its weights and Adam moments, the
        (member, latent) rows whose gradient is exactly zero this step, and copies of those rows, which
        `update` puts back after the step and the decoder renormalisation. So a latent that neither fired
        nor took an AuxK gradient keeps its weights and moments (torch.optim.SparseAdam's rule) instead of
        coasting on the momentum of its last firing, which under dense Adam carries a rare latent ~10x as
        far as the step that fired it (Σ 0.9^t) and drove latents to die (benchmarks/README.md, "Lazy Adam")."""
        params = dict(self.stack.named_parameters())
        held = []
        for name in LATENT_PARAMS:
            grad = params[name].grad
            if grad is None:
                continue
            rows = (grad.abs().amax(-1) if grad.ndim == 3 else grad).eq(0).flatten().nonzero().squeeze(1)
            state = tuple(tensor.view(grad.shape[0] * grad.shape[1], -1)  # rows: member × K + latent
                          for tensor in (params[name].data, self.exp_avg[name], self.exp_avg_sq[name]))
            held.append((state, rows, tuple(tensor.index_select(0, rows) for tensor in state)))
        return held

    def update(self) -> list[dict[str, float]]:
        """One optimizer step on every active member's global batch of `self.step`; returns each member's
        global loss terms (a stopped member's last ones)."""
        cfg = self.cfg
        active = self.active()
        z_MTBD = self._batch(self.step)
        dead_mask = None
        if cfg.activation == "topk" and bool(self.use_auxk.any()):
            dead_mask = self.dead() & self.use_auxk[:, None]
        self.stack.train()
        terms, fired = self._loss_terms(z_MTBD, cfg.batch_size, dead_mask, self._div_sample(self.step))
        for param in self.stack.parameters():
            param.grad = None
        terms.total(self._weights_on_device).sum().backward()
        if self.world > 1:
            for param in self.stack.parameters():
                if param.grad is not None:
                    dist.all_reduce(param.grad)
            fired = self._sum(fired.to(torch.int32)) > 0
        self.stack.remove_parallel_gradient(self.renorm)
        self._clip_gradients()
        held = self._hold_idle_latents() if cfg.lazy_adam else []
        self._adam_step(active)
        on = torch.tensor(active, device=self.device)
        self.stack.renormalize_decoder(self.renorm & on)
        for state, rows, values in held:
            for tensor, value in zip(state, values, strict=True):
                tensor.index_copy_(0, rows, value)
        self.since_fired += cfg.batch_size * on[:, None]
        self.since_fired[fired & on[:, None]] = 0
        self.step += 1
        return self._report(terms, active)

    def _report(self, terms: LossTerms, active: list[bool]) -> list[dict[str, float]]:
        """Per-member loss terms as a model trained alone reports them: a term its variant does not weigh
        is 0, whatever the group computed for other members (AuxK is already 0 without dead latents)."""
        values_MT = self._sum(torch.stack([t.detach().float() for t in terms], 1)).cpu()
        used_MT = self.weights_MT > 0
        used_MT[:, LossTerms._fields.index("sp")] = True
        values_MT = values_MT * used_MT
        totals = LossTerms(*values_MT.unbind(1)).total(self.weights_MT)
        dead = self.dead().float().mean(1).cpu()
        results = []
        for i, member in enumerate(self.progress):
            if active[i]:
                result = dict(zip((f"l_{name}" for name in LossTerms._fields), values_MT[i].tolist(), strict=True))
                result["loss"] = float(totals[i])
                result["dead_fraction"] = float(dead[i])
                member.last_train = result
            results.append(member.last_train)
        return results

    # ---- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, i: int) -> dict[str, float]:
        """Member i's loss terms on its fixed validation subset (AuxK excluded), plus EV, L0 and total."""
        member, model, ids = self.members[i], self.stack.member(i).eval(), self.val_ids[i]
        assert member.val is not None
        sums = dict.fromkeys(("sse", "sp", "stab", "smooth", "l0"), 0.0)
        s1 = torch.zeros(EMBEDDING_DIM, dtype=torch.float64, device=self.device)
        s2 = 0.0
        for start in range(0, len(ids), _VAL_CHUNK):
            z_3BD = torch.stack(member.val.batch(ids[start:start + _VAL_CHUNK])).to(self.device, non_blocking=True)
            b = z_3BD.shape[1]
            x_3BD = model.standardise(z_3BD.flatten(0, 1)).view(3, b, EMBEDDING_DIM)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                codes = model.codes(x_3BD.flatten(0, 1))
                x_hat_BD = model.decode_codes(codes, rows=b).float()
            assert codes.f is not None
            f_t, f_t1, f_aug = codes.f.float().view(3, b, self.d_dict)
            x_t = x_3BD[0].double()
            sums["sse"] += float((x_t - x_hat_BD.double()).pow(2).sum())
            s1 += x_t.sum(0)
            s2 += float(x_t.pow(2).sum())
            sums["sp"] += float(f_t.abs().sum())
            sums["smooth"] += float((f_t - f_t1).abs().sum())
            sums["stab"] += float((f_t - f_aug).abs().sum())
            sums["l0"] += float((f_t > 0).sum())
        n = len(ids)
        total_var = s2 - float(s1.pow(2).sum()) / n
        terms = LossTerms(torch.tensor(sums["sse"] / total_var), torch.tensor(sums["sp"] / n),
                          l_div(model.W_dec).cpu(), torch.tensor(sums["stab"] / n),
                          torch.tensor(sums["smooth"] / n), torch.zeros(()))
        result = {f"val_{k}": v for k, v in terms.as_floats().items() if k != "l_auxk"}
        result["val_loss"] = float(terms.total(self.weights_MT[i]))
        result["val_ev"] = 1.0 - result["val_l_rec"]
        result["val_l0"] = sums["l0"] / n
        result["step"] = self.step
        return result

    def _after_eval(self, i: int, metrics: dict[str, float]) -> None:
        progress = self.progress[i]
        progress.history.append(metrics)
        if metrics["val_loss"] < progress.best_val:
            progress.best_val, progress.best_step, progress.bad_evals = metrics["val_loss"], self.step, 0
            if self.cfg.keep_best:
                progress.best_state = self.stack.member_tensors(i)
        else:
            progress.bad_evals += 1
            if self.cfg.patience and progress.bad_evals >= self.cfg.patience:
                progress.stopped_at = self.step
                log.info("%s: early stop at step %d (best step %d)", self.name(i), self.step, progress.best_step)

    def name(self, i: int) -> str:
        member = self.members[i]
        return f"stsae-{member.variant}-K{self.d_dict}-s{member.seed}"

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps or not any(self.active())

    # ---- the loop -------------------------------------------------------------------------------
    def train(self, until: int | None = None) -> None:
        """Run steps up to `until` (default: the end), evaluating and checkpointing on schedule."""
        stop = self.total_steps if until is None else min(until, self.total_steps)
        t0, start_step = time.perf_counter(), self.step
        label = self.name(0) if len(self.members) == 1 else f"{len(self.members)} models K={self.d_dict}"
        bar = progress(stop - self.step, label, "step")
        while not self.finished and self.step < stop:
            active = self.active()
            self.update()
            bar.update(1)
            if self.step % self.cfg.eval_every == 0 or self.step == self.total_steps:
                for i in range(len(self.members)):
                    if active[i] and len(self.val_ids[i]) > 0:
                        self._after_eval(i, self.evaluate(i))
            if self.checkpoint is not None and (self.step % self.cfg.checkpoint_every == 0 or self.finished):
                self.save_checkpoint(self.checkpoint)
        bar.close()
        seconds = max(time.perf_counter() - t0, 1e-9)
        if self.step > start_step:
            rate = (self.step - start_step) * self.cfg.batch_size / seconds
            log.info("%s: %d steps in %.1f s (%.0f triplets/s per model)", label, self.step - start_step,
                     seconds, rate)
            for i, progress_i in enumerate(self.progress):
                progress_i.last_train["triplets_per_s"] = rate
                log.info("%s: %s", self.name(i), {k: round(v, 4) for k, v in progress_i.last_train.items()})

    def steps_run(self, i: int) -> int:
        stopped = self.progress[i].stopped_at
        return self.step if stopped is None else stopped

    def result(self, i: int) -> tuple[STSAE, dict[str, Any]]:
        """Member i as an independent model (best validation weights when train.keep_best) and its metrics."""
        progress_i = self.progress[i]
        keep = progress_i.best_state if self.cfg.keep_best else None
        model = self.stack.standalone(i, keep).eval()
        best = next((h for h in progress_i.history if h["step"] == progress_i.best_step), None)
        metrics: dict[str, Any] = {
            "steps": self.total_steps, "steps_run": self.steps_run(i),
            "stopped_early": progress_i.stopped_at is not None,
            "best_step": progress_i.best_step if best is not None else None,
            "val": best or (progress_i.history[-1] if progress_i.history else None),
            "train_last": progress_i.last_train, "history": progress_i.history,
            **self.dead_latents(i),
        }
        if model.stats is not None:
            metrics["input_mean_norm_over_std"] = model.stats.mean_norm_over_std
            metrics["effective_rank"] = model.stats.effective_rank
        return model, metrics

    def dead(self) -> Tensor:
        """bool[M, K]: the latents silent for the last `dead_window` training samples (Gao et al.'s dead),
        the one rule AuxK, the step reports and `dead_latents` read."""
        return self.since_fired >= self.dead_window

    def dead_latents(self, i: int) -> dict[str, Any]:
        """Member i's dead latents as Gao et al. count them: no firing on the last N training samples
        (N = `TrainSection.dead_window_for` this K, stated beside the fraction). Before N samples were seen no latent
        can qualify, so the fraction is None rather than a reassuring 0."""
        n, seen = self.dead_window, self.steps_run(i) * self.cfg.batch_size
        fraction = float(self.dead()[i].float().mean()) if seen >= n else None
        return {"dead_fraction_train": fraction, "dead_window_samples": n, "samples_seen": seen}

    # ---- checkpoints ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed (else it is stale and ignored)."""
        return {"d_dict": self.d_dict, "steps": self.total_steps, "train_config": model_recipe(self.cfg),
                "embeddings": self.embeddings, "code": training_code(), "world_size": self.world,
                "members": [{"variant": m.variant, "seed": m.seed, "n_train_pairs": len(m.train),
                             "n_val_pairs": 0 if m.val is None else len(m.val)} for m in self.members]}

    def save_checkpoint(self, path: Path) -> None:
        """Atomically write the whole group's training state (rank 0 only)."""
        if self.rank != 0:
            return
        tensors = {f"model.{name}": getattr(self.stack, name).detach().contiguous().clone() for name in TENSOR_NAMES}
        for name in self.exp_avg:
            tensors[f"adam.{name}.exp_avg"] = self.exp_avg[name].clone()
            tensors[f"adam.{name}.exp_avg_sq"] = self.exp_avg_sq[name].clone()
        tensors["adam.steps"] = self.adam_steps.clone()
        tensors["since_fired"] = self.since_fired.clone()
        for i, progress_i in enumerate(self.progress):
            if progress_i.best_state is not None:
                tensors.update({f"best.{i}.{k}": v for k, v in progress_i.best_state.items()})
        state = {"settings": self.settings(), "step": self.step, "members": [p.state() for p in self.progress],
                 "rng": {"scheme": "derive_seed(seed, name, step|epoch) per draw; no running state"},
                 "optimizer": {"type": "Adam per member", "betas": list(_BETAS), "eps": _EPS}}
        metadata = {"format": CHECKPOINT_FORMAT, "state": json.dumps(state)}
        io.write_bytes(path, safetensors_bytes({k: v.cpu() for k, v in tensors.items()}, metadata))

    def _load_checkpoint(self, path: Path) -> None:
        tensors, header = read_safetensors(path)
        fmt = header.get("format", "")
        if fmt != CHECKPOINT_FORMAT and fmt.startswith("stsae-train/"):
            log.warning("%s: training checkpoint of an older format (%s); ignored, starting fresh", path, fmt)
            return
        if fmt != CHECKPOINT_FORMAT or "state" not in header:
            raise CheckpointError(f"{path}: not an ST-SAE training checkpoint; delete it to start over")
        state = json.loads(header["state"])
        if state["settings"] != self.settings():
            log.warning("%s: checkpoint written with other settings; ignored, starting fresh", path)
            return
        try:
            with torch.no_grad():
                for name in TENSOR_NAMES:
                    getattr(self.stack, name).copy_(tensors[f"model.{name}"])
                for name in self.exp_avg:
                    self.exp_avg[name].copy_(tensors[f"adam.{name}.exp_avg"])
                    self.exp_avg_sq[name].copy_(tensors[f"adam.{name}.exp_avg_sq"])
                self.adam_steps.copy_(tensors["adam.steps"])
                self.since_fired.copy_(tensors["since_fired"])
            progress_list = []
            for i, member_state in enumerate(state["members"]):
                best = {k.split(".", 2)[2]: v.to(self.device) for k, v in tensors.items()
                        if k.startswith(f"best.{i}.")}
                progress_list.append(MemberProgress.from_state(member_state, best or None))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: inconsistent training checkpoint ({exc}); delete it") from None
        self.progress = progress_list
        self.step = state["step"]
        log.info("%s: resumed from %s at step %d", ", ".join(map(self.name, range(len(self.members)))), path,
                 self.step)


class Trainer:
    """Trains one (variant, K, seed) model: a `FusedTrainer` group of one, with single-model accessors."""

    def __init__(self, train: WindowTripletDataset, val: WindowTripletDataset | None, cfg: TrainSection,
                 variant: str, d_dict: int, seed: int, steps: int | None = None,
                 checkpoint: Path | None = None, embeddings: str | None = None, device: torch.device = _CPU):
        self.group = FusedTrainer([Member(variant, seed, train, val)], cfg, d_dict, steps, checkpoint,
                                  embeddings, device)

    @property
    def model(self) -> STSAE:
        """The model being trained (its tensors are the group's: in-place edits train on)."""
        return self.group.stack.member(0)

    @property
    def step(self) -> int:
        return self.group.step

    @step.setter
    def step(self, value: int) -> None:
        self.group.step = value

    @property
    def since_fired(self) -> Tensor:
        """int64[K]: training samples since each latent last fired."""
        return self.group.since_fired[0]

    @since_fired.setter
    def since_fired(self, value: Tensor) -> None:
        self.group.since_fired[0] = value

    @property
    def dead_window(self) -> int:
        """Samples without firing after which a latent counts as dead (`TrainSection.dead_window_for`)."""
        return self.group.dead_window

    def dead(self) -> Tensor:
        """bool[K]: the latents dead by `FusedTrainer.dead`."""
        return self.group.dead()[0]

    @property
    def history(self) -> list[dict[str, float]]:
        return self.group.progress[0].history

    def batch_ids(self, step: int) -> np.ndarray:
        return self.group.batch_ids(0, step)

    def lr_at(self, step: int) -> float:
        return self.group.lr_at(step)

    def update(self) -> dict[str, float]:
        return self.group.update()[0]

    def train(self, until: int | None = None) -> None:
        self.group.train(until)

    def result(self) -> tuple[STSAE, dict[str, Any]]:
        return self.group.result(0)

    def dead_latents(self) -> dict[str, Any]:
        return self.group.dead_latents(0)

    def save_checkpoint(self, path: Path) -> None:
        self.group.save_checkpoint(path)


def fit_group(members: Sequence[Member], cfg: TrainSection, d_dict: int, checkpoint: Path | None = None,
              steps: int | None = None, embeddings: str | None = None,
              device: torch.device = _CPU, distributed: bool = True) -> list[tuple[STSAE, dict[str, Any]]]:
    """Train (or resume, or just reload a finished checkpoint of) M models of one K together; returns
    (model, metrics) per member, in order. See `fit_stsae` for the metrics and the checkpoint, and
    `FusedTrainer` for `distributed`."""
    trainer = FusedTrainer(members, cfg, d_dict, steps=steps, checkpoint=checkpoint, embeddings=embeddings,
                           device=device, distributed=distributed)
    trainer.train()
    return [trainer.result(i) for i in range(len(trainer.members))]


def fit_stsae(train: WindowTripletDataset, val: WindowTripletDataset | None, cfg: TrainSection, variant: str,
              d_dict: int, seed: int, checkpoint: Path | None = None, steps: int | None = None,
              embeddings: str | None = None, device: torch.device = _CPU) -> tuple[STSAE, dict[str, Any]]:
    """Train (or resume, or just reload a finished checkpoint of) one ST-SAE; returns (model, metrics).

    Reusable for refits (e.g. 50 % patient subsamples): pass the subsample's datasets and a `steps`
    override. `checkpoint`, when given, is written every train.checkpoint_every steps and at the end;
    the caller deletes it once it has saved the model; `embeddings` (the extract fingerprint) must match
    for it to be resumed. metrics: steps, steps_run, stopped_early,
    best_step, val (validation terms of the selected weights), train_last, history, dead_fraction_train
    (None before dead_window_samples samples were seen), dead_window_samples, samples_seen,
    input_mean_norm_over_std, effective_rank.
    """
    return fit_group([Member(variant, seed, train, val)], cfg, d_dict, checkpoint, steps, embeddings, device)[0]
