"""ST-SAE: a Top-K (or ReLU) sparse autoencoder over standardised PaPaGei-S embeddings.

    x = (z − input_mean) / input_scale                 standardise (DESIGN §6: ‖μ‖/‖σ‖ ≈ 10)
    f = act(W_enc (x − b_dec) + b_enc)                 act = Top-K of ReLU, or ReLU
    x̂ = W_dec^T f + b_dec,   ẑ = x̂ · input_scale + input_mean

Public SAE practice this follows, and where from:
- Top-K activation, tied init (W_enc = W_decᵀ), unit-norm decoder rows, AuxK on dead latents with its
  loss normalised by the residual's variance: OpenAI "openai/sparse_autoencoder" (Gao et al. 2024).
- `forward` returning a typed NamedTuple (on `StackedSTSAE`, the module training runs through),
  `W_dec` as [K, d_in] rows, sparse decode by gathering the active atoms with `embedding_bag`, the two
  `@torch.no_grad()` decoder-norm helpers, safetensors + JSON:
  EleutherAI "sparsify" (sparse_coder.py, fused_encoder.py).
- b_dec initialised to the geometric median of the data: "saprmarks/dictionary_learning" top_k.py.
- Atoms start as random unit directions with the encoder tied to them (Gao et al.). `init="data"`
  puts them on standardised train rows instead: on our low-rank embeddings (effective rank ≈ 12 of
  512) such atoms fire together and the first reconstructions overshoot the variance many-fold
  unless the encoder is scaled by least squares (`fit_scale`); even then more latents end dead than
  with random atoms (benchmarks/bench_sae_init.py).
- AuxK codes of the selected dead latents (`AUXK_CODES`, train.auxk_code): "relu", their post-ReLU
  pre-activations with gradient only where positive (Gao et al., dictionary_learning, sparsify);
  "straight_through", the same codes with the encoder's gradient passed through the ReLU;
  "linear", the raw pre-activations as codes (encoder and decoder both trained, negative codes
  included). Which revives latents best was measured (benchmarks/README.md, "AuxK code").

The Top-K encoder has a sparse backward pass (only the k selected latents, plus the AuxK latents, get
gradient), so a training step costs one dense GEMM instead of three; see `_TopKEncode`. Training runs
M models of one K at once through `StackedSTSAE` (a model axis on every tensor); a single `STSAE` is
the case M = 1 of the same functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from stsae.errors import StsaeError
from stsae.utils import io

ACTIVATIONS = ("topk", "relu")
FORMAT = "stsae/1"
TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "input_mean", "input_scale")
_PARAMETERS = ("W_dec", "W_enc", "b_enc", "b_dec")  # registration order of STSAE's parameters
_INIT_NOISE = 0.1  # relative isotropic noise mixed into data-sampled atoms so duplicates never tie
_INIT_ROWS = 8192  # train rows for the geometric median and the encoder-scale fit
_STATS_CHUNK = 8192  # rows per float64 chunk of the input statistics
INITS = ("random", "data")
AUXK_CODES = ("relu", "straight_through", "linear")
ARGPARTITION_MAX_K = 4096  # `top_k`: numpy's selection up to this many latents, torch.topk above


class CheckpointError(StsaeError, ValueError):
    """A model file is missing, corrupted, not safetensors (e.g. a pickle) or has mismatched shapes."""


@dataclass(frozen=True)
class InputStats:
    """How the train embeddings look before standardisation (logged and saved for every model)."""

    mean_norm_over_std: float
    effective_rank: float
    n_rows: int


class Codes(NamedTuple):
    """Concept codes of a batch.

    f: float32[B, K] dense codes (differentiable; None if not asked for). For Top-K also
    idx: int64[B, k] and vals: float32[B, k]
    (the active latents) and, when a dead mask was given, aux_idx: int64[B_aux, k_aux], aux_vals:
    float32[B_aux, k_aux] (the largest dead latents of the first B_aux rows, for AuxK); else None.
    Codes of M stacked models (`stacked_codes`) carry a leading model axis on every field.
    """

    f: Tensor | None
    idx: Tensor | None
    vals: Tensor | None
    aux_idx: Tensor | None
    aux_vals: Tensor | None


class ForwardOutput(NamedTuple):
    """Output of `StackedSTSAE.forward` on a stacked triplet batch x_MTBD (M models, T triplet parts
    z_t, z_t+1, z_aug_t in that order, B rows, D inputs; standardised space, where the losses live).

    x_hat: float32[M, B, D], the reconstruction of the first part (z_t) only; codes: the stacked `Codes`
    (AuxK selection included). Every part's codes, differentiable: f float32[M, T, B, K] (dense; None
    for Top-K when not asked for) and, for Top-K, idx int64[M, T, B, k] and vals float32[M, T, B, k]."""

    x_hat: Tensor
    f: Tensor | None
    codes: Codes
    idx: Tensor | None = None
    vals: Tensor | None = None


def _stable_argsort(ids: Tensor, n_ids: int) -> Tensor:
    """torch.argsort(ids, stable=True) of int64[n] ids in [0, n_ids). A stable order is unique, so on the
    CPU, for ids that fit int16, numpy's radix sort gives the same permutation 7–10× faster (0.43 vs
    3.0 ms for the demo's 73,728 encoder selections of six K = 128 models)."""
    if ids.device.type != "cpu" or n_ids > np.iinfo(np.int16).max + 1:
        return torch.argsort(ids, stable=True)
    return torch.from_numpy(np.argsort(ids.numpy().astype(np.int16), kind="stable"))


def _transposed_bag_sum(idx: Tensor, weights: Tensor, rows: Tensor, n_out: int) -> Tensor:
    """out[j] = Σ_{(b,i): idx[b,i]=j} weights[b,i] · rows[b], as one `embedding_bag` with atoms as bags.

    idx: int64[B, m], weights: float32[B, m], rows: float32[B, d] -> float32[n_out, d]. Never
    materialises the [B·m, d] products (sorting the B·m selections by atom is all it needs).
    """
    flat = idx.reshape(-1)
    order = _stable_argsort(flat, n_out)
    row_of = torch.arange(idx.shape[0], device=idx.device).repeat_interleave(idx.shape[1])[order]
    counts = torch.bincount(flat, minlength=n_out)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(row_of, rows, offsets, mode="sum", per_sample_weights=weights.reshape(-1)[order])


def _flat_ids(idx_MRk: Tensor, n_latents: int) -> Tensor:
    """Latent ids of M stacked models made global (model m's latent j -> m·K + j): int64[M·R, k].

    Flattening the model axis into the atom axis lets one `embedding_bag` / `bincount` serve all M
    models while every model still only ever touches its own K atoms."""
    offsets = torch.arange(idx_MRk.shape[0], device=idx_MRk.device) * n_latents
    return (idx_MRk + offsets[:, None, None]).reshape(-1, idx_MRk.shape[-1])


class _CombineAtoms(torch.autograd.Function):
    """Σ_i vals[r,i] · W[idx[r,i]] over flat atom ids, with W's gradient as a transposed bag sum.

    embedding_bag's own backward accumulates each atom's gradient in an order that depends on the
    whole index set, so a model's gradient would change in the last bits with the other models of
    its group; `_transposed_bag_sum` adds each atom's contributions in row order, so a model trained
    in a group gets exactly the gradient it gets alone.
    """

    @staticmethod
    def forward(ctx: Any, flat: Tensor, weight: Tensor, vals: Tensor) -> Tensor:
        ctx.save_for_backward(flat, weight, vals)
        return F.embedding_bag(flat, weight, mode="sum", per_sample_weights=vals)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        flat, weight, vals = ctx.saved_tensors
        grad_vals = None
        if ctx.needs_input_grad[2]:
            with torch.enable_grad():  # embedding_bag's per-entry dot products, without its weight gradient
                probe = vals.detach().requires_grad_()
                out = F.embedding_bag(flat, weight.detach(), mode="sum", per_sample_weights=probe)
                (grad_vals,) = torch.autograd.grad(out, probe, grad_out)
        grad_weight = _transposed_bag_sum(flat, vals, grad_out, weight.shape[0]) if ctx.needs_input_grad[1] else None
        return None, grad_weight, grad_vals


def combine_atoms(w_dec_MKD: Tensor, idx_MRk: Tensor, vals_MRk: Tensor) -> Tensor:
    """Σ_i vals[m,r,i] · W_dec[m, idx[m,r,i]] by gathering atoms: float32[M, R, D] (no [R, K] codes)."""
    n_models, n_latents, d_in = w_dec_MKD.shape
    flat = _flat_ids(idx_MRk, n_latents)
    out = _CombineAtoms.apply(flat, w_dec_MKD.reshape(n_models * n_latents, d_in),
                              vals_MRk.reshape(flat.shape).to(w_dec_MKD.dtype))
    return out.reshape(n_models, idx_MRk.shape[1], d_in)


class _TopKEncode(torch.autograd.Function):
    """Top-K (and AuxK) selection of relu(W_enc (x − b_dec) + b_enc) for M stacked models, sparse backward.

    x: float32[M, R, D], b_dec [M, D], w_enc [M, K, D], b_enc [M, K]; dead_mask: bool[M, K] or None.
    Forward: one batched GEMM. Backward: only the selected latents carry gradient, so W_enc's gradient
    is a gather-sum over R·(k + k_aux) rows per model and b_dec's a [K]·[K, D] product: no [R, K] GEMMs.
    Like EleutherAI's fused_encoder, but the AuxK latents' encoder gradient is kept, not dropped.

    AuxK picks the k_aux largest dead latents among the union of the models' dead latents (cost ∝ dead
    latents); a model with fewer dead latents than that gets -inf pre-activations on the others, which
    come out as zero codes with no gradient, so each model sees exactly its own AuxK selection. The
    selected latents' codes and which of them pass gradient follow `aux_code` (`AUXK_CODES`).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, b_dec: Tensor, w_enc: Tensor, b_enc: Tensor, k: int,
                dead_mask: Tensor | None, k_aux: int, aux_rows: int, aux_code: str) -> tuple[Tensor, ...]:
        centred = x - b_dec[:, None]
        pre = torch.baddbmm(b_enc[:, None], centred, w_enc.transpose(1, 2)).float()
        vals, idx = top_k(pre, k)
        vals = vals.clamp_min(0.0)  # ReLU after the selection: same result, one pass over [R, K] less
        dead_ids = None if dead_mask is None else torch.nonzero(dead_mask.any(0)).squeeze(1)
        if dead_ids is not None and dead_ids.numel() > 0 and k_aux > 0:
            dead_pre = pre[:, :aux_rows].index_select(2, dead_ids)  # [M, R_aux, n_dead]: cost ∝ dead latents
            own = dead_mask.index_select(1, dead_ids)[:, None, :]
            if not bool(own.all()):
                dead_pre = dead_pre.masked_fill(~own, -math.inf)
            # sorted: the order of the selected latents (the order AuxK sums them in) must not depend on
            # the other models' dead latents, which widen dead_pre
            aux_vals, position = dead_pre.topk(min(k_aux, dead_ids.numel()), dim=2, sorted=True)
            aux_idx = dead_ids[position]
            aux_vals, aux_pass = _aux_codes(aux_vals, aux_code)
        else:
            aux_vals = pre.new_zeros(x.shape[0], 0, 0)
            aux_idx = idx.new_zeros(x.shape[0], 0, 0)
            aux_pass = torch.zeros(x.shape[0], 0, 0, dtype=torch.bool, device=x.device)
        ctx.save_for_backward(centred.float(), w_enc, vals, idx, aux_idx, aux_pass)
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx: Any, g_vals: Tensor, _g_idx: Tensor | None, g_aux: Tensor | None,
                 _g_aux_idx: Tensor | None) -> tuple[Tensor | None, ...]:
        centred, w_enc, vals, idx, aux_idx, aux_pass = ctx.saved_tensors
        n_models, n_latents, d_in = w_enc.shape
        n_out = n_models * n_latents
        g = g_vals * (vals > 0)
        flat = _flat_ids(idx, n_latents)
        grad_w = _transposed_bag_sum(flat, g.reshape(flat.shape), centred.reshape(-1, d_in), n_out)
        grad_b_enc = torch.bincount(flat.reshape(-1), weights=g.reshape(-1), minlength=n_out)
        if g_aux is not None and aux_idx.numel() > 0:
            g_aux = g_aux * aux_pass
            flat_aux = _flat_ids(aux_idx, n_latents)
            rows = centred[:, : aux_idx.shape[1]].reshape(-1, d_in)
            grad_w = grad_w + _transposed_bag_sum(flat_aux, g_aux.reshape(flat_aux.shape), rows, n_out)
            grad_b_enc = grad_b_enc + torch.bincount(flat_aux.reshape(-1), weights=g_aux.reshape(-1),
                                                     minlength=n_out)
        grad_b_enc = grad_b_enc.to(w_enc.dtype).reshape(n_models, n_latents)
        grad_b_dec = -torch.bmm(grad_b_enc[:, None], w_enc)[:, 0]
        return (None, grad_b_dec, grad_w.reshape(n_models, n_latents, d_in), grad_b_enc,
                None, None, None, None, None)


def top_k(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(values, indices) of the k largest entries along the last axis of pre: float32[..., K], unordered.

    On the CPU up to `ARGPARTITION_MAX_K` latents through numpy's introselect (`argpartition`), which
    beat torch.topk on one thread: 6.0 vs 10.5 ms for the demo's [6, 768, 128] pre-activations, 5.2 vs
    7.1 ms at [768, 1024], 17.6 vs 19.7 ms at [768, 4096] (but 40 vs 31 ms at 8192). Rows are
    independent either way, so a fused model still selects exactly what it selects alone."""
    n_latents = pre.shape[-1]
    if pre.device.type != "cpu" or pre.dtype != torch.float32 or not 0 < k < n_latents \
            or n_latents > ARGPARTITION_MAX_K:
        return pre.topk(k, dim=-1, sorted=False)
    flat = pre.detach().reshape(-1, n_latents).numpy()
    idx = torch.from_numpy(np.argpartition(flat, n_latents - k, axis=1)[:, n_latents - k:])
    idx = idx.reshape(*pre.shape[:-1], k)
    return pre.gather(-1, idx), idx


def _aux_codes(pre: Tensor, aux_code: str) -> tuple[Tensor, Tensor]:
    """(codes, bool mask of the entries that pass gradient) of the selected dead latents' pre-activations.

    pre: float32[M, R, k_aux], -inf where the latent is not the model's own (those give code 0 and no
    gradient in every mode). "relu": relu(pre), gradient where pre > 0; "straight_through": relu(pre),
    gradient through the ReLU as if it were the identity; "linear": pre itself (see `AUXK_CODES`)."""
    own = torch.isfinite(pre)
    if aux_code == "linear":
        return torch.where(own, pre, 0.0), own
    if aux_code == "straight_through":
        return pre.clamp_min(0.0), own
    if aux_code == "relu":
        return pre.clamp_min(0.0), pre > 0
    raise StsaeError(f"train.auxk_code: must be one of {AUXK_CODES}, got {aux_code!r}")


def stacked_codes(x: Tensor, w_enc: Tensor, b_enc: Tensor, b_dec: Tensor, activation: str, k: int,
                  dead_mask: Tensor | None = None, k_aux: int = 0, aux_rows: int | None = None,
                  aux_code: str = "relu") -> Codes:
    """Codes of M stacked models on standardised x: float32[M, R, D] (see `Codes`, every field with a
    leading model axis). dead_mask: bool[M, K] enables AuxK for the first `aux_rows` rows (default all),
    its codes per `aux_code` (`AUXK_CODES`). Top-K codes stay sparse (f None); ReLU codes are dense."""
    if activation == "relu":
        f = F.relu(torch.baddbmm(b_enc[:, None], x - b_dec[:, None], w_enc.transpose(1, 2)).float())
        return Codes(f, None, None, None, None)
    n_aux = x.shape[1] if aux_rows is None else aux_rows
    vals, idx, aux_vals, aux_idx = _TopKEncode.apply(x, b_dec, w_enc, b_enc, k, dead_mask, k_aux, n_aux, aux_code)
    if aux_idx.numel() == 0:
        return Codes(None, idx, vals, None, None)
    return Codes(None, idx, vals, aux_idx, aux_vals)


def scatter_codes(idx: Tensor, vals: Tensor, n_latents: int) -> Tensor:
    """Top-K codes int64[..., k], float32[..., k] scattered into dense float32[..., K] (differentiable)."""
    out = torch.zeros(*idx.shape[:-1], n_latents, dtype=vals.dtype, device=vals.device)
    return out.scatter(-1, idx, vals)


@torch.no_grad()
def fired_latents(idx_MBk: Tensor, vals_MBk: Tensor, n_latents: int) -> Tensor:
    """bool[M, K]: the latents of each model with a positive Top-K code on some row (idx, vals [M, B, k])."""
    fired = torch.zeros(idx_MBk.shape[0] * n_latents, dtype=torch.bool, device=idx_MBk.device)
    fired[_flat_ids(idx_MBk, n_latents)[vals_MBk.reshape(-1, idx_MBk.shape[-1]) > 0]] = True
    return fired.view(idx_MBk.shape[0], n_latents)


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-5) -> Tensor:
    """Weiszfeld iterations (as in dictionary_learning): points float32[N, d] -> float32[d]."""
    guess = points.mean(0)
    for _ in range(max_iter):
        weights = 1.0 / torch.linalg.vector_norm(points - guess, dim=1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if torch.linalg.vector_norm(new - guess) < tol:
            return new
        guess = new
    return guess


def input_statistics(z: np.ndarray, chunk_rows: int = _STATS_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """(mean float64[d], scatter float64[d, d] = Σ (z − μ)(z − μ)ᵀ) of rows z: float[N, d].

    Two passes over float64 chunks of `chunk_rows` rows, so the peak is one chunk plus d×d, whatever N
    (the direct float64 computation on 100k rows peaked at 2.6 GiB).
    """
    n = z.shape[0]
    total = np.zeros(z.shape[1])
    for start in range(0, n, chunk_rows):
        total += np.asarray(z[start:start + chunk_rows], dtype=np.float64).sum(0)
    mean = total / n
    scatter = np.zeros((z.shape[1], z.shape[1]))
    for start in range(0, n, chunk_rows):
        centred = np.asarray(z[start:start + chunk_rows], dtype=np.float64) - mean
        scatter += centred.T @ centred
    return mean, scatter


def effective_rank_of_scatter(scatter: np.ndarray) -> float:
    """Entropy effective rank (Roy & Vetterli 2007): exp(H(λ/Σλ)) of the eigenvalues of a scatter matrix.

    1 for a line, d for isotropic data.
    """
    power = np.clip(np.linalg.eigvalsh(scatter), 0.0, None)
    p = power[power > 0] / power.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def effective_rank(centred: np.ndarray) -> float:
    """Effective rank of rows already centred: float[N, d] (see `effective_rank_of_scatter`)."""
    return effective_rank_of_scatter(input_statistics(centred)[1])


def _rows(z: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """float32[n, d]: n distinct random rows of z (with replacement only when z has fewer)."""
    total = z.shape[0]
    picks = torch.randperm(total, generator=generator)[:n] if total >= n else \
        torch.randint(total, (n,), generator=generator)
    return np.asarray(z[np.sort(picks.numpy())], dtype=np.float32)


class STSAE(nn.Module):
    """Sparse autoencoder with a dictionary of K unit-norm atoms (rows of `W_dec`: float32[K, d_in]).

    Parameters: W_enc float32[K, d_in], b_enc float32[K], W_dec float32[K, d_in], b_dec float32[d_in]
    (standardised space). Buffers: input_mean float32[d_in], input_scale float32[] (train split).
    """

    def __init__(self, d_in: int = 512, d_dict: int = 1024, activation: str = "topk", k: int = 16,
                 sparse_decode: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise StsaeError(f"train.activation: must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "topk" and not 1 <= k <= d_dict:
            raise StsaeError(f"train.k={k} must be between 1 and the dictionary size {d_dict}")
        self.d_in, self.d_dict, self.activation, self.k = d_in, d_dict, activation, k
        self.sparse_decode = sparse_decode
        atoms = torch.randn(d_dict, d_in, generator=generator)
        atoms /= torch.linalg.vector_norm(atoms, dim=1, keepdim=True)
        self.W_dec = nn.Parameter(atoms)
        self.W_enc = nn.Parameter(atoms.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_dict))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.stats: InputStats | None = None

    # ---- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, z: np.ndarray, generator: torch.Generator, init: str = "random",
                       fit_scale: bool = False,
                       statistics: tuple[np.ndarray, np.ndarray] | None = None) -> InputStats:
        """Set mean/scale, b_dec and the tied atoms from train rows z: float32[N, d_in]; return the stats
        (the trainer logs them once per statistics pass, which a fused group's members share).

        scale = sqrt(mean ‖z − μ‖²), so E‖x‖² = 1 and code magnitudes are O(1) whatever the encoder:
        the loss weights in the config then mean the same on every dataset. b_dec starts at the
        geometric median (dictionary_learning). init="random" keeps the random unit atoms of the
        constructor (Gao et al.); "data" puts them on random standardised train rows. fit_scale then
        scales the tied encoder so the first reconstructions have the least-squares magnitude (see
        `_fit_encoder_scale`; data-row atoms without it overshoot many-fold). statistics: precomputed
        `input_statistics(z)` of these same rows (a fused group computes them once for all its members).
        """
        if init not in INITS:
            raise StsaeError(f"train.init: must be one of {INITS}, got {init!r}")
        if z.ndim != 2 or z.shape[1] != self.d_in or z.shape[0] < 2:
            raise StsaeError(f"train rows: expected float32[N>=2, {self.d_in}], got {list(z.shape)}")
        mean, scatter = input_statistics(z) if statistics is None else statistics
        n = z.shape[0]
        scale = float(np.sqrt(np.trace(scatter) / n))
        if not scale > 0:
            raise StsaeError("train embeddings are constant (zero spread); check the extract stage")
        stats = InputStats(float(np.linalg.norm(mean) / scale), effective_rank_of_scatter(scatter), n)
        self.input_mean.copy_(torch.from_numpy(mean).float())
        self.input_scale.fill_(scale)
        sample = self.standardise(torch.from_numpy(_rows(z, _INIT_ROWS, generator)))
        self.b_dec.copy_(geometric_median(sample))
        if init == "data":
            atoms = F.normalize(self.standardise(torch.from_numpy(_rows(z, self.d_dict, generator))) - self.b_dec,
                                dim=1)
            noise = torch.randn(self.d_dict, self.d_in, generator=generator) / math.sqrt(self.d_in)
            self.W_dec.copy_(F.normalize(atoms + _INIT_NOISE * noise, dim=1))
        self.W_enc.copy_(self.W_dec)
        self.b_enc.zero_()
        if fit_scale:
            self._fit_encoder_scale(sample)
        self.stats = stats
        return stats

    @torch.no_grad()
    def _fit_encoder_scale(self, x: Tensor) -> None:
        """Scale W_enc by the s minimising Σ‖x − b_dec − s·r‖², r the tied reconstruction minus b_dec.

        With b_enc = 0 both Top-K and ReLU are positively homogeneous: scaling W_enc by s > 0 keeps
        the selected latents and scales their codes, so the first reconstruction is exactly s·r.
        Tied data-row atoms on low-rank data otherwise fire together and overshoot many-fold; after
        the correction most latents had a negative pre-activation on every row (dead). Random atoms
        do not overshoot, and scaling them leaves more latents dead (README, Measured), hence off by default.
        """
        target = x - self.b_dec
        recon = self.decode_codes(self.codes(x, dense=False)) - self.b_dec
        power = float(recon.pow(2).sum())
        s = float((target * recon).sum()) / power if power > 0 else 0.0
        if s > 0:
            self.W_enc.mul_(s)

    # ---- decoder geometry -----------------------------------------------------------------------
    @torch.no_grad()
    def renormalize_decoder(self) -> None:
        """Project every atom (row of W_dec) back to unit norm; call after every optimizer step."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Remove from W_dec.grad the component along each (unit) atom, before the optimizer step.

        With unit atoms, that component would only change atom norms, which renormalisation undoes;
        keeping it would leak into Adam's moments (OpenAI/sparsify practice).
        """
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    # ---- encode / decode ------------------------------------------------------------------------
    def standardise(self, z: Tensor) -> Tensor:
        """z: float32[B, d_in] raw embeddings -> x: float32[B, d_in] standardised."""
        if z.ndim != 2 or z.shape[1] != self.d_in:
            raise StsaeError(f"ST-SAE input: expected z of shape [B, {self.d_in}], got {list(z.shape)}")
        return (z.float() - self.input_mean) / self.input_scale

    def codes(self, x: Tensor, dead_mask: Tensor | None = None, k_aux: int = 0,
              aux_rows: int | None = None, dense: bool = True, aux_code: str = "relu") -> Codes:
        """Codes of standardised x: float32[B, d_in]. dead_mask: bool[K] enables AuxK selection of the
        k_aux largest dead latents for the first `aux_rows` rows (default all), codes per `aux_code`
        (`AUXK_CODES`). dense=False skips
        building the [B, K] codes for Top-K (f is then None; use `dense_codes` on row slices).
        The one-model case of `stacked_codes` (a model axis of length 1), so inference and training
        share one Top-K implementation."""
        one = stacked_codes(x[None], self.W_enc[None], self.b_enc[None], self.b_dec[None], self.activation,
                            self.k, None if dead_mask is None else dead_mask[None], k_aux, aux_rows, aux_code)
        codes = Codes(*(None if part is None else part[0] for part in one))
        if dense and codes.f is None and codes.idx is not None and codes.vals is not None:
            codes = codes._replace(f=self.dense_codes(codes.idx, codes.vals))
        return codes

    def dense_codes(self, idx: Tensor, vals: Tensor) -> Tensor:
        """Scatter Top-K codes int64[B, k], float32[B, k] into dense float32[B, K] (differentiable)."""
        return scatter_codes(idx, vals, self.d_dict)

    def decode_codes(self, codes: Codes, rows: int | None = None) -> Tensor:
        """x̂: float32[rows, d_in] (standardised) for the first `rows` rows of `codes` (default all)."""
        if codes.idx is not None and codes.vals is not None:
            n = codes.idx.shape[0] if rows is None else rows
            if self.sparse_decode:
                return self.sparse_combination(codes.idx[:n], codes.vals[:n]) + self.b_dec
            return self.dense_codes(codes.idx[:n], codes.vals[:n]) @ self.W_dec + self.b_dec
        assert codes.f is not None
        return codes.f[: codes.f.shape[0] if rows is None else rows] @ self.W_dec + self.b_dec

    def sparse_combination(self, idx: Tensor, vals: Tensor) -> Tensor:
        """Σ_i vals[b,i] · W_dec[idx[b,i]] by gathering atoms: int64[B, m], float32[B, m] -> [B, d_in]."""
        return combine_atoms(self.W_dec[None], idx[None], vals[None])[0]

    def encode(self, z: Tensor) -> Tensor:
        """Raw z: float32[B, d_in] -> codes f: float32[B, K] (non-negative; k non-zero for Top-K)."""
        f = self.codes(self.standardise(z)).f
        assert f is not None
        return f

    def decode(self, f: Tensor) -> Tensor:
        """Codes f: float32[B, K] -> ẑ: float32[B, d_in] in raw z space."""
        if f.ndim != 2 or f.shape[1] != self.d_dict:
            raise StsaeError(f"ST-SAE decode: expected f of shape [B, {self.d_dict}], got {list(f.shape)}")
        return (f.float() @ self.W_dec + self.b_dec) * self.input_scale + self.input_mean

    # ---- persistence ----------------------------------------------------------------------------
    def header(self) -> dict[str, str]:
        """Architecture facts stored in the safetensors header (strings, as safetensors requires)."""
        header = {"format": FORMAT, "d_in": str(self.d_in), "d_dict": str(self.d_dict),
                  "activation": self.activation, "k": str(self.k)}
        if self.stats is not None:
            header["input_stats"] = json.dumps(self.stats.__dict__)
        return header

    def tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name).detach().contiguous().clone() for name in TENSOR_NAMES}

    def save(self, path: Path | str, sidecar: dict[str, Any]) -> None:
        """Write `path` (.safetensors) then its `.json` sidecar (which marks the model complete)."""
        path = Path(path)
        io.write_bytes(path, safetensors_bytes(self.tensors(), self.header()))
        info = {"d_dict": self.d_dict, "activation": self.activation, "k": self.k, **sidecar}
        if self.stats is not None:
            info.setdefault("input_mean_norm_over_std", self.stats.mean_norm_over_std)
            info.setdefault("effective_rank", self.stats.effective_rank)
        io.write_json(path.with_suffix(".json"), info)

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], header: dict[str, str], source: Path) -> STSAE:
        """Rebuild a model from safetensors contents, refusing anything inconsistent (names `source`)."""
        try:
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')!r} is not {FORMAT!r}")
            d_in, d_dict, k = int(header["d_in"]), int(header["d_dict"]), int(header["k"])
            activation = header["activation"]
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{source}: not an ST-SAE model file ({exc})") from None
        expected = {"W_enc": (d_dict, d_in), "b_enc": (d_dict,), "W_dec": (d_dict, d_in),
                    "b_dec": (d_in,), "input_mean": (d_in,), "input_scale": ()}
        for name, shape in expected.items():
            if name not in tensors:
                raise CheckpointError(f"{source}: tensor '{name}' missing")
            got = tuple(tensors[name].shape)
            if got != shape:
                raise CheckpointError(
                    f"{source}: tensor '{name}' has shape {list(got)}, expected {list(shape)}")
            if not torch.isfinite(tensors[name]).all():
                raise CheckpointError(f"{source}: tensor '{name}' holds NaN or inf")
        model = cls(d_in, d_dict, activation, k, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for name in TENSOR_NAMES:
                getattr(model, name).copy_(tensors[name])
        if "input_stats" in header:
            model.stats = InputStats(**json.loads(header["input_stats"]))
        return model

    @classmethod
    def load(cls, path: Path | str) -> STSAE:
        """Load a model written by `save`; only safetensors is read (a pickle is refused, never run)."""
        path = Path(path)
        tensors, header = read_safetensors(path)
        model = cls.from_tensors(tensors, header, path)
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
            except json.JSONDecodeError:
                raise CheckpointError(f"{sidecar}: not valid JSON") from None
            for key in ("d_dict", "activation", "k"):
                if key in info and info[key] != getattr(model, key):
                    raise CheckpointError(
                        f"{sidecar}: '{key}' is {info[key]!r} but {path.name} holds {getattr(model, key)!r}")
        model.eval()
        return model


class StackedSTSAE(nn.Module):
    """M ST-SAEs of one architecture (same d_in, K, activation, k) as one module with a model axis.

    Parameters: W_dec, W_enc float32[M, K, d_in], b_enc [M, K], b_dec [M, d_in]; buffers input_mean
    [M, d_in], input_scale [M]. Why: at small K one model's training step is mostly per-op overhead,
    and M models in one set of batched ops pay that overhead once. Members never mix: every op is per
    model (batched GEMMs, top-k along each model's own latents, gathers over disjoint atom ranges), so
    each member trains as it would alone. `member(i)` is an `STSAE` whose tensors are views of model
    i's slices (reads and in-place writes go through to the stack).
    """

    def __init__(self, models: list[STSAE]):
        super().__init__()
        first = models[0]
        for model in models:
            shape = (model.d_in, model.d_dict, model.activation, model.k, model.sparse_decode)
            if shape != (first.d_in, first.d_dict, first.activation, first.k, first.sparse_decode):
                raise StsaeError("a fused group needs one architecture (d_in, K, activation, k, sparse_decode); "
                                 f"got {shape} next to {(first.d_in, first.d_dict, first.activation, first.k)}")
        self.d_in, self.d_dict, self.activation, self.k = first.d_in, first.d_dict, first.activation, first.k
        self.sparse_decode = first.sparse_decode
        for name in _PARAMETERS:  # STSAE's registration order, so per-model gradient norms sum alike
            setattr(self, name, nn.Parameter(torch.stack([getattr(m, name).detach() for m in models])))
        self.register_buffer("input_mean", torch.stack([m.input_mean for m in models]))
        self.register_buffer("input_scale", torch.stack([m.input_scale for m in models]))
        self.stats = [m.stats for m in models]
        self._members: dict[int, STSAE] = {}

    @property
    def n_models(self) -> int:
        return self.W_dec.shape[0]

    def member(self, i: int) -> STSAE:
        """Model i as an `STSAE` sharing storage with the stack (built once, then cached)."""
        if i not in self._members:
            model = STSAE(self.d_in, self.d_dict, self.activation, self.k, self.sparse_decode,
                          generator=torch.Generator().manual_seed(0))
            for name in _PARAMETERS:
                setattr(model, name, nn.Parameter(getattr(self, name).data[i]))
            model.input_mean = self.input_mean[i]
            model.input_scale = self.input_scale[i]
            model.stats = self.stats[i]
            self._members[i] = model
        return self._members[i]

    def member_tensors(self, i: int) -> dict[str, Tensor]:
        """Independent copies of model i's tensors, keyed like `STSAE.tensors`."""
        return {name: getattr(self, name)[i].detach().contiguous().clone() for name in TENSOR_NAMES}

    def standalone(self, i: int, tensors: dict[str, Tensor] | None = None) -> STSAE:
        """An independent `STSAE` holding model i (or `tensors`, e.g. its best validation weights)."""
        model = STSAE(self.d_in, self.d_dict, self.activation, self.k, self.sparse_decode,
                      generator=torch.Generator().manual_seed(0)).to(self.W_dec.device)
        with torch.no_grad():
            for name, value in (tensors or self.member_tensors(i)).items():
                getattr(model, name).copy_(value)
        model.stats = self.stats[i]
        return model

    def standardise(self, z: Tensor) -> Tensor:
        """z: float32[M, ..., d_in] raw embeddings (model m's rows first) -> standardised by model m (a copy)."""
        return self.standardise_(z.float().clone())

    def standardise_(self, z: Tensor) -> Tensor:
        """`standardise` in place on a float32 z the caller owns (the trainer's batch): no two more
        [M, T, B, D] tensors per step."""
        extra = (1,) * (z.ndim - 2)
        return z.sub_(self.input_mean.reshape(self.n_models, *extra, self.d_in)).div_(
            self.input_scale.reshape(self.n_models, *extra, 1))

    def forward(self, x_MTBD: Tensor, dead_mask: Tensor | None = None, k_aux: int = 0,
                aux_code: str = "relu", dense_codes: bool = True) -> ForwardOutput:
        """Codes of every part of a standardised stacked triplet and the reconstruction of its z_t part.

        dead_mask: bool[M, K] turns on AuxK's selection among each model's dead latents on the z_t rows
        (codes per `aux_code`, `AUXK_CODES`). dense_codes=False: Top-K codes only as idx / vals (f None)."""
        n_models, n_parts, b, _ = x_MTBD.shape
        codes = stacked_codes(x_MTBD.reshape(n_models, n_parts * b, self.d_in), self.W_enc, self.b_enc,
                              self.b_dec, self.activation, self.k, dead_mask, k_aux, aux_rows=b, aux_code=aux_code)
        if codes.idx is None or codes.vals is None:
            assert codes.f is not None
            x_hat_MBD = torch.bmm(codes.f[:, :b], self.W_dec) + self.b_dec[:, None]
            return ForwardOutput(x_hat_MBD, codes.f.reshape(n_models, n_parts, b, self.d_dict), codes)
        f_MRK = scatter_codes(codes.idx, codes.vals, self.d_dict) if dense_codes else None
        if self.sparse_decode:
            x_hat_MBD = combine_atoms(self.W_dec, codes.idx[:, :b], codes.vals[:, :b])
        else:
            f_MBK = f_MRK[:, :b] if f_MRK is not None else scatter_codes(codes.idx[:, :b], codes.vals[:, :b],
                                                                           self.d_dict)
            x_hat_MBD = torch.bmm(f_MBK, self.W_dec)
        shape = (n_models, n_parts, b, self.k)
        f_MTBK = None if f_MRK is None else f_MRK.reshape(n_models, n_parts, b, self.d_dict)
        return ForwardOutput(x_hat_MBD + self.b_dec[:, None], f_MTBK, codes, codes.idx.view(shape),
                             codes.vals.view(shape))

    def aux_reconstruction(self, codes: Codes) -> Tensor:
        """float32[M, R_aux, d_in]: what each model's selected dead latents reconstruct (AuxK, no bias)."""
        assert codes.aux_idx is not None and codes.aux_vals is not None
        return combine_atoms(self.W_dec, codes.aux_idx, codes.aux_vals)

    @torch.no_grad()
    def renormalize_decoder(self, models: Tensor) -> None:
        """Project the atoms of the models in bool[M] `models` back to unit norm; the others stay exactly."""
        norms = torch.linalg.vector_norm(self.W_dec, dim=2, keepdim=True).clamp_min(1e-12)
        self.W_dec.div_(torch.where(models[:, None, None], norms, torch.ones_like(norms)))

    @torch.no_grad()
    def remove_parallel_gradient(self, models: Tensor) -> None:
        """`STSAE.remove_parallel_gradient` for the models in bool[M] `models` (the renormalised ones)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(2, keepdim=True) * models[:, None, None]
        self.W_dec.grad.sub_(parallel * self.W_dec)


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors serialisation of `tensors` with a canonical (sorted-key) JSON header.

    safetensors writes the metadata from a Rust HashMap whose iteration order changes from process to
    process, so two saves of identical tensors differ byte-wise. Sorting the header makes model files
    a pure function of their contents (same seed, same bytes); data offsets are relative to the end of
    the header, so only its length field changes.
    """
    raw = safetensors_save(tensors, metadata=metadata)
    n_header = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n_header])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n_header :]


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the header of a safetensors file; any failure is one CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: model file missing (run `stsae train`)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable safetensors file (corrupted, or a pickle?): {reason}") from None
    return tensors, header
