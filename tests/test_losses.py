"""The ST-SAE losses: values at known points, invariances, sampling, and DDP-style sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.config import LossWeights
from stsae.models.stsae import fired_latents, scatter_codes
from stsae.train.losses import (
    LossTerms,
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


def _x(seed: int = 0, n: int = 64, d: int = 16) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_l_rec_is_zero_for_perfect_and_one_for_mean_reconstruction():
    x = _x()
    assert l_rec(x, x) == 0
    assert torch.isclose(l_rec(x, x.mean(0).expand_as(x)), torch.tensor(1.0))


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-100, 100), scale=st.floats(0.01, 100), seed=st.integers(0, 1000))
def test_l_rec_is_invariant_to_standardisation(shift, scale, seed):
    z, z_hat = _x(seed), _x(seed + 1)
    raw = l_rec(z * scale + shift, z_hat * scale + shift)
    assert torch.isclose(raw, l_rec(z, z_hat), rtol=1e-3)


def test_l_rec_shares_with_global_variance_sum_to_whole_batch_loss():
    x, x_hat = _x(), _x(1)
    total = centred_sum_of_squares(x)
    shares = l_rec(x[:20], x_hat[:20], total) + l_rec(x[20:], x_hat[20:], total)
    assert torch.isclose(shares, l_rec(x, x_hat))


def test_l_sp_is_mean_l1_norm_per_row():
    f = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    assert l_sp(f) == 2.0
    assert l_sp(f, n=4) == 1.0


def test_l_stab_and_l_smooth_are_zero_for_identical_codes_and_mean_l1_otherwise():
    f = torch.rand(8, 5)
    g = f.clone()
    g[0, 0] += 4
    assert l_stab(f, f) == 0 and l_smooth(f, f) == 0
    assert torch.isclose(l_stab(f, g), torch.tensor(0.5))
    assert torch.isclose(l_smooth(f, g), torch.tensor(0.5))


def test_l_div_is_zero_for_orthogonal_atoms_and_one_for_identical_atoms():
    assert l_div(torch.eye(6, 10) * 3) == 0
    assert torch.isclose(l_div(torch.ones(5, 10)), torch.tensor(1.0))


def test_l_div_exact_gram_form_matches_brute_force_pairs():
    w = _x(2, n=40, d=16)
    unit = F.normalize(w, dim=1)
    cos_sq = (unit @ unit.T).pow(2)
    brute = (cos_sq.sum() - cos_sq.diagonal().sum()) / (40 * 39)
    assert torch.isclose(l_div(w), brute, rtol=1e-4)


def test_l_div_sampled_estimate_is_unbiased():
    w = _x(3, n=200, d=16)
    gen = torch.Generator().manual_seed(0)
    estimates = torch.stack([l_div(w, torch.randperm(200, generator=gen)[:20]) for _ in range(400)])
    assert torch.isclose(estimates.mean(), l_div(w), rtol=0.03)


def test_l_div_gradient_decorrelates_atoms():
    w = (torch.eye(4, 8) + 0.3).requires_grad_()
    before = l_div(w)
    before.backward()
    with torch.no_grad():
        assert l_div(w - 0.1 * w.grad) < before


def test_l_auxk_is_zero_when_dead_latents_explain_the_residual_and_ignores_its_gradient():
    residual = _x(4).requires_grad_()
    assert l_auxk(residual, residual.detach()) == 0
    aux_recon = torch.zeros_like(residual, requires_grad=True)
    l_auxk(residual, aux_recon).backward()
    assert residual.grad is None and aux_recon.grad is not None


def _fitted_auxk(residual: torch.Tensor, aux_recon: torch.Tensor) -> torch.Tensor:
    scale = auxk_scale((residual * aux_recon).sum((-2, -1)), aux_recon.pow(2).sum((-2, -1)))
    return l_auxk(residual, aux_recon, scale=scale)


def test_auxk_scale_forgives_an_overshoot_and_caps_an_undershoot_at_one():
    residual = _x(5) - _x(5).mean(0)  # centred, so that ‖e‖² is exactly the normaliser
    assert _fitted_auxk(residual, 3 * residual) < 1e-6  # plain AuxK: 4 × the residual's variance
    assert l_auxk(residual, 3 * residual) > 3
    assert torch.allclose(_fitted_auxk(residual, 0.5 * residual), l_auxk(residual, 0.5 * residual))
    assert torch.allclose(_fitted_auxk(residual, -residual), torch.tensor(1.0))  # scale 0: no better than nothing


def test_fitted_auxk_gradient_turns_the_reconstruction_without_shrinking_it():
    """At the least-squares scale the gradient on ê is orthogonal to ê: no push towards smaller codes."""
    residual = _x(6)
    aux_recon = (3 * residual + torch.randn_like(residual)).requires_grad_()
    _fitted_auxk(residual, aux_recon).backward()
    assert abs(float((aux_recon.grad * aux_recon.detach()).sum())) < 1e-4 * float(aux_recon.grad.norm())
    aux_plain = aux_recon.detach().clone().requires_grad_()
    l_auxk(residual, aux_plain).backward()
    assert float((aux_plain.grad * aux_plain.detach()).sum()) > 0  # plain AuxK: descent shrinks ê


def test_total_counts_sparsity_only_for_relu_and_auxk_only_for_topk():
    one = torch.tensor(1.0)
    terms = LossTerms(one, one, one, one, one, one)
    weights = LossWeights(sp=0.5, div=0.1, stab=0.2, smooth=0.3, auxk=0.4)
    relu, topk = (torch.tensor(term_weights(weights, activation)) for activation in ("relu", "topk"))
    assert torch.isclose(terms.total(relu), torch.tensor(1 + 0.5 + 0.1 + 0.2 + 0.3))
    assert torch.isclose(terms.total(topk), torch.tensor(1 + 0.1 + 0.2 + 0.3 + 0.4))


def test_every_term_reduces_per_model_over_a_leading_model_axis():
    """Stacked models (float32[M, B, K]) get one loss each, equal to the loss of their own slice."""
    gen = torch.Generator().manual_seed(0)
    x, x_hat = torch.randn(3, 20, 8, generator=gen), torch.randn(3, 20, 8, generator=gen)
    f, g = torch.randn(3, 20, 16, generator=gen).relu(), torch.randn(3, 20, 16, generator=gen).relu()
    w_dec = torch.randn(3, 16, 8, generator=gen)
    sample = torch.stack([torch.randperm(16, generator=gen)[:5] for _ in range(3)])
    for m in range(3):
        assert torch.allclose(l_rec(x, x_hat)[m], l_rec(x[m], x_hat[m]))
        assert torch.allclose(l_sp(f)[m], l_sp(f[m]))
        assert torch.allclose(l_stab(f, g)[m], l_stab(f[m], g[m]))
        assert torch.allclose(l_smooth(f, g)[m], l_smooth(f[m], g[m]))
        assert torch.allclose(l_auxk(x, x_hat)[m], l_auxk(x[m], x_hat[m]))
        assert torch.allclose(l_div(w_dec)[m], l_div(w_dec[m]))
        assert torch.allclose(l_div(w_dec, sample)[m], l_div(w_dec[m], sample[m]))


@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-100, 100), scale=st.floats(0.1, 100), seed=st.integers(0, 1000))
def test_centred_sum_of_squares_matches_float64_per_leading_index(shift, scale, seed):
    x = torch.randn(3, 2, 64, 16, generator=torch.Generator().manual_seed(seed)) * scale + shift
    reference = ((x.double() - x.double().mean(-2, keepdim=True)) ** 2).sum((-2, -1))
    got = centred_sum_of_squares(x)
    assert got.shape == (3, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=0.0)
    assert centred_sum_of_squares(x[0, 0]).shape == ()


def _top_k_codes(gen: torch.Generator, rows: int, n_latents: int, k: int) -> SparseCodes:
    """Top-K codes with some exact zeros among the values (a ReLU after the selection)."""
    ids = torch.stack([torch.randperm(n_latents, generator=gen)[:k] for _ in range(rows)])
    return SparseCodes(ids, torch.rand(rows, k, generator=gen).clamp_min(0.2) - 0.2)


def _partner(codes: SparseCodes, gen: torch.Generator, n_latents: int, overlap: float) -> SparseCodes:
    """Codes of the same rows sharing about `overlap` of their active latents with `codes`, in another
    slot order, one shared latent per row tied in value."""
    rows, k = codes.idx.shape
    other = _top_k_codes(gen, rows, n_latents, k)
    keep = torch.rand(rows, k, generator=gen) < overlap
    ids = [torch.where(keep[r], codes.idx[r], other.idx[r]) for r in range(rows)]
    ids = torch.stack([row if row.unique().numel() == k else codes.idx[r] for r, row in enumerate(ids)])
    vals = other.vals.clone()
    vals[ids == codes.idx] = codes.vals[ids == codes.idx]
    slots = torch.stack([torch.randperm(k, generator=gen) for _ in range(rows)])
    return SparseCodes(ids.gather(1, slots), vals.gather(1, slots))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), overlap=st.floats(0.0, 1.0),
       sp_weight=st.sampled_from([0.0, 0.001]))
def test_sparse_code_losses_and_their_gradients_equal_the_dense_codes(seed, k, overlap, sp_weight):
    """The Top-K training step never scatters codes into [B, K]: L_smooth(f_t, f_t+1), L_stab(f_t, f_aug)
    and L_sp(f_t) of the sparse codes equal the dense ones, and with L_sp's Top-K weight (0) every active
    entry gets bit for bit the dense gradient, which keeps the trained weights identical."""
    gen = torch.Generator().manual_seed(seed)
    f_t = _top_k_codes(gen, rows=9, n_latents=16, k=k)
    f_t1, f_aug = _partner(f_t, gen, 16, overlap), _partner(f_t, gen, 16, 1.0 - overlap)
    results = []
    for dense in (False, True):
        vals = [part.vals.clone().requires_grad_() for part in (f_t, f_t1, f_aug)]
        parts = [scatter_codes(part.idx, v, 16) if dense else SparseCodes(part.idx, v)
                 for part, v in zip((f_t, f_t1, f_aug), vals, strict=True)]
        terms = torch.stack([l_smooth(parts[0], parts[1]), l_stab(parts[0], parts[2], n=4), l_sp(parts[0])])
        (terms * torch.tensor([0.05, 0.03, sp_weight])).sum().backward()
        results.append((terms.detach(), [v.grad for v in vals]))
    (sparse_terms, sparse_grads), (dense_terms, dense_grads) = results
    # The values are float32 sums of the same entries in another order: Σ|b| − Σ|m| can cancel to a dense 0,
    # leaving the sums' rounding, a few eps times the mass summed (of the three parts, per row of the n = 4 term).
    mass = sum(float(part.vals.abs().sum()) for part in (f_t, f_t1, f_aug)) / 4
    torch.testing.assert_close(sparse_terms, dense_terms, rtol=1e-6, atol=4 * torch.finfo(torch.float32).eps * mass)
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads, strict=True):
        if sp_weight == 0.0:
            assert torch.equal(sparse_grad, dense_grad)
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-9)


def test_sparse_l1_distance_counts_shared_latents_once_per_leading_index():
    a = SparseCodes(torch.tensor([[[0, 3]], [[1, 2]]]), torch.tensor([[[1.0, 2.0]], [[0.5, 0.0]]]))
    b = SparseCodes(torch.tensor([[[3, 5]], [[2, 1]]]), torch.tensor([[[0.5, 4.0]], [[0.5, 1.0]]]))
    # model 0: |1 - 0| + |2 - 0.5| + |0 - 4| = 6.5; model 1: |0.5 - 1| + |0 - 0.5| = 1.0
    torch.testing.assert_close(l_smooth(a, b), torch.tensor([6.5, 1.0]))


def test_sparse_and_dense_codes_are_not_mixed_in_one_distance():
    sparse = _top_k_codes(torch.Generator().manual_seed(4), rows=3, n_latents=8, k=2)
    with pytest.raises(TypeError, match="one kind"):
        l_smooth(sparse, scatter_codes(sparse.idx, sparse.vals, 8))


def test_fired_latents_are_those_with_a_positive_code_on_some_row():
    a = _top_k_codes(torch.Generator().manual_seed(3), rows=6, n_latents=16, k=5)
    idx, vals = torch.stack([a.idx, a.idx.flip(0)]), torch.stack([a.vals, torch.zeros_like(a.vals)])
    expected = (scatter_codes(idx, vals, 16) > 0).any(1)
    assert torch.equal(fired_latents(idx, vals, 16), expected)
    assert expected[0].any() and not expected[1].any()


@pytest.mark.parametrize(("n", "d"), [(12, 16), (40, 16)])  # the n×n Gram, and the d×d one when n > d
def test_l_div_hand_written_gradient_matches_autograd_of_the_definition(n: int, d: int) -> None:
    """`_MeanSquaredCosine`'s gradient against autograd through normalise → cosines → off-diagonal mean,
    in float64, for two stacked models (a leading axis) and an upstream weight per model."""
    w = torch.randn(2, n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    upstream = torch.tensor([0.7, -1.3], dtype=torch.float64)
    mine = w.clone().requires_grad_()
    (l_div(mine) * upstream).sum().backward()
    reference = w.clone().requires_grad_()
    unit = F.normalize(reference, dim=-1)
    cos_sq = (unit @ unit.mT).pow(2)
    off_diagonal = (cos_sq.sum((-2, -1)) - cos_sq.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    (off_diagonal * upstream).sum().backward()
    torch.testing.assert_close(l_div(w), off_diagonal.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mine.grad, reference.grad, rtol=1e-10, atol=1e-13)
    assert torch.autograd.gradcheck(l_div, (w[:1].clone().requires_grad_(),))
