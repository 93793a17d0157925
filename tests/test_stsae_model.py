"""STSAE model: standardisation, Top-K, sparse backward, decoder geometry, save/load and refusals."""

from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from stsae.errors import StsaeError
from stsae.models.stsae import (
    ARGPARTITION_MAX_K,
    STSAE,
    StackedSTSAE,
    _stable_argsort,
    effective_rank,
    input_statistics,
    scatter_codes,
    top_k,
)

D = 512


def _data(n: int = 400, rank: int = 8, seed: int = 0) -> np.ndarray:
    """Low-rank embeddings with a large mean, like PaPaGei-S's (DESIGN §6)."""
    rs = np.random.default_rng(seed)
    return (rs.normal(size=(n, rank)) @ rs.normal(size=(rank, D)) + 10 * rs.normal(size=D)).astype(np.float32)


def _model(k_dict: int = 64, activation: str = "topk", k: int = 8, sparse: bool = True) -> STSAE:
    gen = torch.Generator().manual_seed(0)
    model = STSAE(D, k_dict, activation, k, sparse_decode=sparse, generator=gen)
    model.init_from_data(_data(), gen)
    return model


def test_init_from_data_standardises_to_zero_mean_unit_power():
    model = _model()
    x = model.standardise(torch.from_numpy(_data()))
    assert x.mean(0).abs().max() < 1e-4
    assert (x.pow(2).sum(1).mean() - 1).abs() < 1e-4


def test_init_from_data_reports_mean_over_spread_and_effective_rank():
    stats = _model().stats
    assert stats is not None
    assert stats.mean_norm_over_std > 3
    assert 2 < stats.effective_rank < 8.5


def test_effective_rank_counts_equal_directions():
    rs = np.random.default_rng(0)
    basis = np.linalg.qr(rs.normal(size=(D, 5)))[0].T
    data = rs.choice([-1.0, 1.0], size=(4000, 5)) @ basis
    assert effective_rank(data - data.mean(0)) == pytest.approx(5, rel=0.02)


def test_init_ties_encoder_to_a_positive_multiple_of_the_unit_norm_decoder():
    model = _model()
    scale = model.W_enc.norm(dim=1)
    assert torch.allclose(scale, scale[0].expand(64)) and scale[0] > 0
    assert torch.allclose(model.W_enc / scale[0], model.W_dec, atol=1e-6)
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(64), atol=1e-6)


def test_streamed_input_statistics_equal_the_direct_float64_computation():
    z = _data(n=1000)
    mean, scatter = input_statistics(z, chunk_rows=77)
    z64 = z.astype(np.float64)
    centred = z64 - z64.mean(0)
    assert np.allclose(mean, z64.mean(0), rtol=0, atol=1e-9)
    assert np.allclose(scatter, centred.T @ centred, rtol=1e-10, atol=1e-6)
    singular = np.linalg.svd(centred, compute_uv=False) ** 2
    p = singular / singular.sum()
    assert effective_rank(centred) == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-6)


def test_input_statistics_peak_memory_is_one_chunk_not_the_whole_array():
    z = np.random.default_rng(0).normal(size=(20_000, D)).astype(np.float32)  # 41 MB, 82 MB as float64
    tracemalloc.start()
    input_statistics(z, chunk_rows=1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 16e6


@pytest.mark.parametrize("init", ["random", "data"])
def test_fitted_encoder_scale_makes_the_first_reconstruction_least_squares(init):
    gen = torch.Generator().manual_seed(0)
    model = STSAE(D, 64, "topk", 8, generator=gen)
    z = _data(n=2000)
    model.init_from_data(z, gen, init=init, fit_scale=True)
    with torch.no_grad():
        x = model.standardise(torch.from_numpy(z))
        target, recon = x - model.b_dec, model.decode_codes(model.codes(x)) - model.b_dec
    assert abs(float((target - recon).mul(recon).sum())) < 1e-2 * float(recon.pow(2).sum())


def test_unscaled_data_row_atoms_overshoot_and_the_fitted_scale_removes_it():
    z = torch.from_numpy(_data(n=2000))

    def first_l_rec(fit_scale: bool) -> float:
        gen = torch.Generator().manual_seed(0)
        model = STSAE(D, 256, "topk", 32, generator=gen)
        model.init_from_data(z.numpy(), gen, init="data", fit_scale=fit_scale)
        x = model.standardise(z)
        with torch.no_grad():
            return float((x - model.decode_codes(model.codes(x))).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    assert first_l_rec(False) > 5
    assert first_l_rec(True) < 1


def test_unknown_init_is_refused_naming_the_key():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(StsaeError, match=r"train\.init"):
        STSAE(D, 64, "topk", 8, generator=gen).init_from_data(_data(), gen, init="zeros")


@pytest.mark.parametrize(("aux_code", "code_is_zero", "gets_gradient"),
                         [("relu", True, False), ("straight_through", True, True), ("linear", False, True)])
def test_auxk_codes_of_latents_negative_on_every_row_follow_the_mode(aux_code, code_is_zero, gets_gradient):
    """relu: code 0, no gradient (Gao et al.); straight_through: code 0, encoder gradient through the
    ReLU; linear: the negative pre-activation itself, with gradient. Live latents never get any."""
    model = _model()
    x = model.standardise(torch.from_numpy(_data(n=50, seed=5)))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::4] = True
    with torch.no_grad():
        model.b_enc[dead] = -100.0  # dead for good: every pre-activation is negative
    codes = model.codes(x, dead, k_aux=16, aux_code=aux_code)
    assert dead[codes.aux_idx].all()
    assert bool((codes.aux_vals == 0).all()) is code_is_zero
    assert code_is_zero or (codes.aux_vals < 0).all()
    codes.aux_vals.sum().backward()
    assert bool((model.b_enc.grad[dead] > 0).all()) is gets_gradient
    assert gets_gradient or (model.b_enc.grad == 0).all()
    assert (model.b_enc.grad[~dead] == 0).all()


def test_auxk_relu_codes_train_dead_latents_where_their_pre_activation_is_positive():
    model = _model()
    x = model.standardise(torch.from_numpy(_data(n=50, seed=5)))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::4] = True
    codes = model.codes(x, dead, k_aux=16, aux_code="relu")
    positive = codes.aux_vals > 0
    assert positive.any() and not positive.all()
    codes.aux_vals.sum().backward()
    trained = torch.zeros(64, dtype=torch.bool)
    trained[codes.aux_idx[positive]] = True
    assert torch.equal(model.b_enc.grad > 0, trained)


def test_unknown_auxk_code_is_refused_naming_the_key():
    model = _model()
    x = model.standardise(torch.from_numpy(_data(n=8, seed=5)))
    with pytest.raises(StsaeError, match=r"train\.auxk_code"):
        model.codes(x, torch.ones(64, dtype=torch.bool), k_aux=4, aux_code="identity")


def test_topk_keeps_exactly_k_active():
    model = _model(k=8)
    f = model.encode(torch.from_numpy(_data(seed=1)))
    assert f.shape == (400, 64)
    assert torch.all((f > 0).sum(1) == 8)


def test_relu_codes_are_nonnegative_and_dense_shaped():
    f = _model(activation="relu").encode(torch.from_numpy(_data(seed=1)))
    assert f.shape == (400, 64) and f.min() >= 0 and (f > 0).any()


def test_decode_of_encode_is_the_standardised_reconstruction_in_raw_space():
    model = _model()
    z = torch.from_numpy(_data(seed=2))
    x_hat = model.decode_codes(model.codes(model.standardise(z)))
    assert torch.allclose(model.decode(model.encode(z)), x_hat * model.input_scale + model.input_mean, atol=1e-3)


def _reconstruction(model: STSAE, z: torch.Tensor) -> torch.Tensor:
    return model.decode_codes(model.codes(model.standardise(z)))


def test_sparse_decode_equals_dense_decode():
    z = torch.from_numpy(_data(seed=3))
    assert torch.allclose(_reconstruction(_model(sparse=True), z), _reconstruction(_model(sparse=False), z),
                          atol=1e-5)


def _dense_reference(model: STSAE, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    """Plain autograd Top-K + AuxK selection, the behaviour the sparse backward must reproduce."""
    pre = F.linear(x - model.b_dec, model.W_enc, model.b_enc)
    vals, _ = pre.topk(model.k, dim=1)
    aux_vals, _ = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=1)
    w = torch.linspace(0.5, 1.5, model.k)
    return (vals.relu() * w).sum() + (aux_vals.relu() ** 2).sum()


def test_sparse_topk_backward_matches_dense_autograd():
    model = _model()
    x = model.standardise(torch.from_numpy(_data(n=50, seed=4)))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    _dense_reference(model, x, dead, 5).backward()
    expected = [p.grad.clone() for p in (model.W_enc, model.b_enc, model.b_dec)]
    model.zero_grad()
    codes = model.codes(x, dead, k_aux=5)
    order = codes.vals.argsort(dim=1, descending=True)
    w = torch.linspace(0.5, 1.5, model.k)
    ((codes.vals.gather(1, order) * w).sum() + (codes.aux_vals**2).sum()).backward()
    for got, want in zip((model.W_enc.grad, model.b_enc.grad, model.b_dec.grad), expected, strict=True):
        assert torch.allclose(got, want, atol=1e-4)


def test_renormalize_decoder_makes_every_atom_unit_norm():
    model = _model()
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(64, 1) * 5 + 0.1)
    model.renormalize_decoder()
    assert torch.allclose(model.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


def test_remove_parallel_gradient_leaves_only_the_orthogonal_part():
    model = _model()
    grad = torch.randn(64, D)
    model.W_dec.grad = grad.clone()
    model.remove_parallel_gradient()
    assert (model.W_dec.grad * model.W_dec).sum(1).abs().max() < 1e-5
    parallel = (grad * model.W_dec).sum(1, keepdim=True) * model.W_dec
    assert torch.allclose(model.W_dec.grad, grad - parallel, atol=1e-5)


def test_save_load_round_trip_gives_identical_codes(tmp_path):
    model = _model()
    path = tmp_path / "m.safetensors"
    model.save(path, {"variant": "full", "seed": 0, "complete": True})
    loaded = STSAE.load(path)
    z = torch.from_numpy(_data(seed=5))
    assert torch.equal(loaded.encode(z), model.encode(z))
    assert loaded.stats == model.stats


def test_load_refuses_corrupted_file_with_one_line_naming_it(tmp_path):
    path = tmp_path / "broken.safetensors"
    _model().save(path, {})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(StsaeError, match=r"broken\.safetensors") as err:
        STSAE.load(path)
    assert "\n" not in str(err.value)


def test_load_refuses_a_pickle_without_running_it(tmp_path):
    path = tmp_path / "pickled.safetensors"
    path.write_bytes(pickle.dumps({"W_enc": np.zeros(3)}))
    with pytest.raises(StsaeError, match=r"pickled\.safetensors"):
        STSAE.load(path)


def test_load_refuses_mismatched_shapes_naming_the_tensor(tmp_path):
    model = _model()
    tensors = model.tensors()
    tensors["W_dec"] = tensors["W_dec"][:, :100].contiguous()
    path = tmp_path / "shapes.safetensors"
    save_file(tensors, str(path), metadata=model.header())
    with pytest.raises(StsaeError, match=r"shapes.safetensors.*W_dec"):
        STSAE.load(path)


def test_load_refuses_sidecar_that_disagrees_with_weights(tmp_path):
    path = tmp_path / "m.safetensors"
    _model().save(path, {"d_dict": 4096})
    with pytest.raises(StsaeError, match=r"m.json.*d_dict"):
        STSAE.load(path)


def test_encode_refuses_wrong_width_naming_expected_shape():
    with pytest.raises(StsaeError, match="512"):
        _model().encode(torch.zeros(3, 100))


def _members(n: int = 3, activation: str = "topk") -> list[STSAE]:
    models = []
    for seed in range(n):
        gen = torch.Generator().manual_seed(seed)
        model = STSAE(D, 64, activation, 8, generator=gen)
        model.init_from_data(_data(seed=seed), gen)
        models.append(model)
    return models


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_stacked_forward_gives_each_member_its_own_codes_and_reconstruction(activation):
    """Each member sees only its own rows and weights: stacking must not mix models."""
    models = _members(activation=activation)
    stack = StackedSTSAE(models)
    z_MTBD = torch.stack([torch.from_numpy(_data(n=96, seed=10 + m)).view(3, 32, D) for m in range(3)])
    x_MTBD = stack.standardise(z_MTBD)
    out = stack(x_MTBD)
    for m, model in enumerate(models):
        x_RD = model.standardise(z_MTBD[m].reshape(96, D))
        codes = model.codes(x_RD)
        f = out.f[m] if out.f is not None else scatter_codes(out.idx[m], out.vals[m], 64)
        assert torch.allclose(f.reshape(96, 64), codes.f, atol=1e-5)
        assert torch.allclose(out.x_hat[m], model.decode_codes(codes, rows=32), atol=1e-5)


def test_stacked_auxk_picks_only_each_members_own_dead_latents_and_pads_with_zero_gradient():
    stack = StackedSTSAE(_members())
    dead = torch.zeros(3, 64, dtype=torch.bool)
    dead[0, :20] = True  # member 0: 20 dead, member 1: 3 dead, member 2: none
    dead[1, 40:43] = True
    x = stack.standardise(torch.from_numpy(_data(n=32, seed=5)).expand(3, 32, D)[:, None])
    out = stack(x, dead, k_aux=8)
    aux_idx, aux_vals = out.codes.aux_idx, out.codes.aux_vals
    assert aux_idx.shape == (3, 32, 8)
    assert dead[0][aux_idx[0]].all()
    own = dead[1][aux_idx[1]]
    assert own.sum(1).eq(3).all() and (aux_vals[1][~own] == 0).all() and (aux_vals[2] == 0).all()
    stack.aux_reconstruction(out.codes).pow(2).sum().backward()
    touched = stack.W_enc.grad.abs().sum(2) > 0
    assert not touched[2].any() and not touched[1][:40].any() and not touched[1][43:].any()


def test_member_views_share_storage_with_the_stack():
    stack = StackedSTSAE(_members(2))
    member = stack.member(1)
    with torch.no_grad():
        member.W_dec.mul_(2.0)
    assert torch.equal(stack.W_dec[1], member.W_dec) and not torch.equal(stack.W_dec[0], member.W_dec)
    copy = stack.standalone(1)
    with torch.no_grad():
        copy.W_dec.zero_()
    assert stack.W_dec[1].abs().sum() > 0


def test_a_group_of_different_architectures_is_refused():
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(StsaeError, match="one architecture"):
        StackedSTSAE([STSAE(D, 64, "topk", 8, generator=gen), STSAE(D, 32, "topk", 8, generator=gen)])


@pytest.mark.parametrize("n_latents", [64, 128, ARGPARTITION_MAX_K + 8])
def test_top_k_selects_the_k_largest_entries_of_every_row(n_latents):
    """Both selection paths (numpy's below ARGPARTITION_MAX_K, torch's above): the k largest per row,
    the values at the indices, torch.topk's index set where a row has no ties, and rows of ties too."""
    pre = torch.randn(2, 50, n_latents, generator=torch.Generator().manual_seed(n_latents))
    pre[0, 0] = 0.0  # every entry tied
    pre[1, :, :10] = 5.0  # ten tied maxima for seven places
    vals, idx = top_k(pre, 7)
    assert idx.shape == vals.shape == (2, 50, 7)
    torch.testing.assert_close(vals, pre.gather(-1, idx))
    assert (idx.sort(-1).values.diff(dim=-1) > 0).all()  # distinct latents
    unselected = pre.scatter(-1, idx, -torch.inf).amax(-1)
    assert (vals.amin(-1) >= unselected).all()
    reference = pre.topk(7, dim=-1).indices.sort(-1).values
    assert torch.equal(idx[0, 1:].sort(-1).values, reference[0, 1:])


@pytest.mark.parametrize("n_ids", [768, 32768, 40000])
def test_stable_argsort_is_torchs_stable_order(n_ids):
    ids = torch.randint(n_ids, (5000,), generator=torch.Generator().manual_seed(n_ids))
    ids[:100] = ids[0]  # runs of equal ids keep their order
    assert torch.equal(_stable_argsort(ids, n_ids), torch.argsort(ids, stable=True))
