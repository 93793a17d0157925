"""The five ST-SAE losses (plus AuxK), each a small pure function on one triplet batch.

Codes are dense float32[B, K] or, for Top-K, `SparseCodes` (the k active latents per row, never
scattered into [B, K]); inputs float32[B, d], or with leading axes (float32[M, B, K] for M models
trained together): every reduction runs over the last two axes, so each leading index gets its own loss
(a [M] tensor). Reductions take an optional global normaliser
(`n` rows, or a total variance) so that under DDP each rank's share sums to exactly the loss of the
whole global batch; left out, they normalise by the local batch, which is the single-process case.

L_rec is computed in standardised space: ‖z − ẑ‖² / ‖z − z̄‖² is invariant to z ↦ (z − μ)/s, so it
equals the raw-space definition in DESIGN §4 while staying well conditioned.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from stsae.config import LossWeights


class SparseCodes(NamedTuple):
    """Top-K codes without their zeros: idx int64[..., B, k] latent ids (distinct per row) and vals
    float32[..., B, k] their values; the dense codes are vals scattered into zeros at idx.

    Why: a dense [M, 3B, K] copy of the codes of a training step (its scatter, the zero-filled gradient
    of each part and the gather back) took 13 % of a K = 1024 step and 25 % at K = 8192 (benchmarks/
    README.md, "Code losses on the active Top-K entries") for losses that only read the k active entries."""

    idx: Tensor
    vals: Tensor


PartCodes = Tensor | SparseCodes


def _rows(f: PartCodes) -> int:
    return (f.vals if isinstance(f, SparseCodes) else f).shape[-2]


def l1_distance_sum(a: PartCodes, b: PartCodes) -> Tensor:
    """Σ_b ‖a_b − b_b‖₁ over the last two axes of two codes of the same kind.

    Sparse: Σ|a − m| + Σ|b| − Σ|m|, m = b's value of the latent a has at each active slot (0 where b does
    not have it), found by a binary search in b's sorted ids: O(B·k log k), no [B, K]. The gradient per
    active entry is the dense one (−, +1 or 0 times the upstream gradient for each of |a−b|, |b|)."""
    if isinstance(a, SparseCodes) != isinstance(b, SparseCodes):
        raise TypeError("l1_distance_sum: codes of one kind, both dense or both SparseCodes")
    if not isinstance(a, SparseCodes) or not isinstance(b, SparseCodes):
        return (a - b).abs().sum((-2, -1))
    b_ids, order = b.idx.sort(dim=-1)
    b_vals = b.vals.gather(-1, order)
    slot = torch.searchsorted(b_ids, a.idx.contiguous()).clamp_max(b_ids.shape[-1] - 1)
    shared = b_ids.gather(-1, slot) == a.idx
    m = torch.where(shared, b_vals.gather(-1, slot), 0.0)
    return (a.vals - m).abs().sum((-2, -1)) + b.vals.abs().sum((-2, -1)) - m.abs().sum((-2, -1))


def centred_sum_of_squares(x: Tensor) -> Tensor:
    """Σ_b ‖x_b − x̄‖² for x: float32[..., B, d] (the denominator of a normalised MSE), no gradient.

    One centring pass and one BLAS dot product per leading index. The float64 copy this replaced took
    7–11 ms of a ~90 ms training step of the demo's six fused K = 128 models for what the dot does in
    ~1 ms; the two agree to ~2e-7 relative, far below what a loss normaliser needs."""
    x = x.detach()
    centred = (x - x.mean(-2, keepdim=True)).reshape(-1, 1, x.shape[-2] * x.shape[-1])
    return torch.bmm(centred, centred.transpose(1, 2)).reshape(x.shape[:-2]).float()


def l_rec(x: Tensor, x_hat: Tensor, total_variance: Tensor | None = None) -> Tensor:
    """Normalised MSE Σ‖x − x̂‖² / Σ‖x − x̄‖² (fraction of variance unexplained = 1 − EV)."""
    if total_variance is None:
        total_variance = centred_sum_of_squares(x)
    return (x - x_hat).pow(2).sum((-2, -1)) / total_variance


def l_sp(f: PartCodes, n: int | None = None) -> Tensor:
    """Mean L1 norm of the codes, mean_b ‖f_b‖₁ (ReLU variant's sparsity penalty)."""
    values = f.vals if isinstance(f, SparseCodes) else f
    return values.abs().sum((-2, -1)) / (n or values.shape[-2])


def l_div(w_dec: Tensor, sample: Tensor | None = None) -> Tensor:
    """Mean squared off-diagonal cosine between decoder atoms (rows of w_dec: float32[..., K, d]).

    sample: int64[..., m] distinct atom ids (per leading index); when given, only the m(m−1) pairs among those atoms are
    averaged. Every pair is equally likely to be drawn, so this is an unbiased estimate of the full
    mean at O(m²·d) per step, independent of K. (Sampling m atoms against all K, O(m·K·d), costs
    as much as the Top-K encoder itself at m = 128, K = 1024.)
    Without a sample the exact mean is computed from the smaller of the two Gram matrices (`_MeanSquaredCosine`).
    """
    atoms = w_dec if sample is None else w_dec.gather(-2, sample[..., None].expand(*sample.shape, w_dec.shape[-1]))
    return _MeanSquaredCosine.apply(atoms)


class _MeanSquaredCosine(torch.autograd.Function):
    """mean_{i≠j} cos²(a_i, a_j) of the rows of atoms: float32[..., n, d] -> [...], with its gradient written out.

    Why: autograd's version (normalise, Gram, square, subtract the diagonal) cost 6.1 ms forward and
    backward for the demo's three fused K = 128 models, 0.7 ms of it forward: its backward is a dozen
    broadcast elementwise passes and two transposed batched GEMMs; by hand it is one GEMM and three passes.

    With u_i = a_i/‖a_i‖ and G = U Uᵀ: n(n−1)·L = Σ_{i≠j} G_ij², so ∂L/∂u_k = 4/(n(n−1)) · Σ_{j≠k} G_kj u_j,
    and through the normalisation ∂L/∂a_k = (g_k − u_k ⟨u_k, g_k⟩) / ‖a_k‖. When n > d the d×d Gram UᵀU
    is the smaller one: ‖UᵀU‖²_F = ‖UUᵀ‖²_F, so n(n−1)·L = ‖UᵀU‖²_F − Σ‖u_i‖⁴ and g = 4/(n(n−1)) ·
    (U·UᵀU − ‖u_i‖² u_i).
    """

    @staticmethod
    def forward(ctx: Any, atoms: Tensor) -> Tensor:
        norms = torch.linalg.vector_norm(atoms, dim=-1, keepdim=True).clamp_min(1e-12)
        unit = atoms / norms
        n, d = unit.shape[-2:]
        if n <= d:
            gram = unit @ unit.mT
            gram.diagonal(dim1=-2, dim2=-1).zero_()
            total = gram.pow(2).sum((-2, -1))
        else:
            gram = unit.mT @ unit
            total = gram.pow(2).sum((-2, -1)) - unit.pow(2).sum(-1).pow(2).sum(-1)
        ctx.save_for_backward(unit, gram, norms)
        return total / (n * (n - 1))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        unit, gram, norms = ctx.saved_tensors
        n, d = unit.shape[-2:]
        g_unit = gram @ unit if n <= d else unit @ gram - unit.pow(2).sum(-1, keepdim=True) * unit
        g_unit = g_unit * (grad * (4.0 / (n * (n - 1))))[..., None, None]
        return (g_unit - unit * (unit * g_unit).sum(-1, keepdim=True)) / norms


def l_stab(f_t: PartCodes, f_aug: PartCodes, n: int | None = None) -> Tensor:
    """Augmentation stability: mean_b ‖f(z_t) − f(z_aug_t)‖₁."""
    return l1_distance_sum(f_t, f_aug) / (n or _rows(f_t))


def l_smooth(f_t: PartCodes, f_t1: PartCodes, n: int | None = None) -> Tensor:
    """Temporal smoothness: mean_b ‖f(z_t) − f(z_{t+1})‖₁ (pairs never cross a record boundary)."""
    return l1_distance_sum(f_t, f_t1) / (n or _rows(f_t))


def l_auxk(residual: Tensor, aux_recon: Tensor, residual_variance: Tensor | None = None,
           scale: Tensor | None = None) -> Tensor:
    """AuxK (OpenAI, Gao et al. 2024): dead latents predict the main model's residual.

    residual: float32[B, d] = x − x̂ (detached here), aux_recon: float32[B, d] from the top dead latents
    (no bias). Normalised by the residual's own centred variance, as in openai/sparse_autoencoder.
    scale: float32[...] per leading index (no gradient, `auxk_scale`) multiplies aux_recon; None: 1.
    """
    residual = residual.detach()
    if residual_variance is None:
        residual_variance = centred_sum_of_squares(residual)
    if scale is not None:
        aux_recon = aux_recon * scale[..., None, None]
    return (residual - aux_recon).pow(2).sum((-2, -1)) / residual_variance.clamp_min(1e-12)


def auxk_scale(dot: Tensor, power: Tensor) -> Tensor:
    """Least-squares scale of the AuxK reconstruction, clamp(⟨e, ê⟩ / ‖ê‖², 0, 1), from the batch sums
    dot = Σ⟨e_b, ê_b⟩ and power = Σ‖ê_b‖² (float32[...], global under DDP); no gradient.

    Why: the k_aux dead latents' codes sum to an ê many times the residual's size (k_aux random atoms
    against a small residual), and plain AuxK answers by pushing every selected code down, i.e. the dead
    latents closest to firing below zero, where the ReLU ends their gradient for good: at K = 2048 an
    early AuxK left more latents never firing than none (benchmarks/README.md, "AuxK code"). With ê
    scaled to its best fit the overshoot costs nothing, and the gradient only turns the selected
    latents towards the residual; capped at 1, an ê too small is still pushed to grow. An ê of zeros
    (every selected latent negative on every row) gets scale 0, hence no AuxK gradient even for
    straight-through codes; scale 1 there was tried and left more of the demo's latents dead
    (benchmarks/README.md, "AuxK code").
    """
    return (dot / power.clamp_min(1e-12)).clamp(0.0, 1.0).detach()


def term_weights(weights: LossWeights, activation: str) -> tuple[float, ...]:
    """Weights of the LossTerms fields in order. L_sp counts only for ReLU (Top-K fixes the L0 at k, so
    L1 there is moot) and AuxK only for Top-K."""
    return (1.0, weights.sp if activation == "relu" else 0.0, weights.div, weights.stab, weights.smooth,
            weights.auxk if activation == "topk" else 0.0)


class LossTerms(NamedTuple):
    """Every term of one step, each a scalar tensor or one value per model (zero when the variant does
    not use it)."""

    rec: Tensor
    sp: Tensor
    div: Tensor
    stab: Tensor
    smooth: Tensor
    auxk: Tensor

    def total(self, weights: Tensor) -> Tensor:
        """Weighted sum Σ_j weights[..., j] · term_j, weights float32[..., 6] in field order (`term_weights`)."""
        return (torch.stack(tuple(self), -1) * weights).sum(-1)

    def as_floats(self) -> dict[str, float]:
        return {f"l_{name}": float(value) for name, value in self._asdict().items()}
