"""PaPaGei-S: upstream state_dict layout, safe strict loading, weights policy, deterministic encoding."""

import logging

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stsae.config import EncoderSection
from stsae.errors import StsaeError
from stsae.models import encoder_runtime
from stsae.models.encoder_runtime import CompiledEmbedder, FastEmbedder, choose_precision, should_compile
from stsae.models.papagei import (
    PaPaGeiS,
    embed_batches,
    encode,
    load_encoder,
    load_papagei_s,
    same_padding,
)


class NotATensor:
    """A custom class: weights_only unpickling must refuse it."""


@pytest.fixture(scope="module")
def trained_like_model():
    """PaPaGei-S with non-trivial BatchNorm statistics, like a trained checkpoint."""
    torch.manual_seed(3)
    model = PaPaGeiS()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return model


def _windows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1250)).astype(np.float32)


def test_papagei_s_has_the_upstream_parameter_count_and_state_dict_keys():
    model = PaPaGeiS()
    keys = list(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == 5_785_612
    assert len(keys) == 294
    for key in ("first_block_conv.conv.weight", "first_block_bn.running_var",
                "basicblock_list.0.bn1.weight", "basicblock_list.17.conv2.conv.bias", "final_bn.weight",
                "dense.weight", "expert_layers_1.2.2.weight", "expert_layers_2.0.3.bias",
                "gating_network_2.0.weight"):
        assert key in keys


def test_forward_returns_embedding_heads_and_pooled_with_upstream_shapes():
    out = PaPaGeiS()(torch.from_numpy(_windows(2)).unsqueeze(1))
    assert [tuple(t.shape) for t in out] == [(2, 512), (2, 1), (2, 1), (2, 512)]


def test_checkpoint_saved_with_module_prefix_loads_strictly(tmp_path, trained_like_model):
    path = tmp_path / "papagei_s.pt"
    torch.save({f"module.{k}": v for k, v in trained_like_model.state_dict().items()}, path)
    loaded = load_papagei_s(path)
    for key, value in trained_like_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_with_a_wrong_shape_is_refused_naming_the_file_and_key(tmp_path):
    state = PaPaGeiS().state_dict()
    state["dense.weight"] = torch.zeros(256, 512)
    path = tmp_path / "bad_shape.pt"
    torch.save(state, path)
    with pytest.raises(StsaeError, match=r"bad_shape\.pt: 'dense\.weight' has shape \[256, 512\]"):
        load_papagei_s(path)


def test_checkpoint_with_missing_keys_is_refused(tmp_path):
    state = PaPaGeiS().state_dict()
    del state["final_bn.weight"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(StsaeError, match=r"partial\.pt: not a PaPaGei-S state_dict \(1 missing"):
        load_papagei_s(path)


def test_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"dense.weight": torch.zeros(1), "payload": NotATensor()}, path)
    with pytest.raises(StsaeError, match=r"evil\.pt: holds pickled objects other than tensors"):
        load_papagei_s(path)


def test_unset_weights_without_random_opt_in_is_refused_naming_the_config_key():
    with pytest.raises(StsaeError, match=r"encoder\.weights is not set"):
        load_encoder(EncoderSection(), seed=0)


def test_random_weights_are_seeded_and_announced_with_a_warning(caplog):
    section = EncoderSection(allow_random_weights=True)
    with caplog.at_level(logging.WARNING, logger="stsae"):
        first, identity = load_encoder(section, seed=7)
    second, _ = load_encoder(section, seed=7)
    assert identity == {"weights": None, "sha256": "RANDOM"}
    assert "RANDOM weights" in caplog.text
    assert torch.equal(first.dense.weight, second.dense.weight)


def test_encode_is_deterministic_and_returns_float32_embeddings(trained_like_model):
    windows = _windows(5)
    first = encode(trained_like_model, windows, batch_size=2)
    assert first.dtype == np.float32 and first.shape == (5, 512)
    assert first.tobytes() == encode(trained_like_model, windows, batch_size=2).tobytes()


def test_encode_rejects_windows_of_the_wrong_length(trained_like_model):
    with pytest.raises(ValueError, match=r"float32\[N, 1250\]"):
        encode(trained_like_model, np.zeros((2, 1000), dtype=np.float32))


def test_fast_embedder_matches_the_reference_model(trained_like_model):
    windows = _windows(4, seed=1)
    reference = encode(trained_like_model, windows)
    fast = embed_batches(FastEmbedder(trained_like_model), windows, 4, "fp32")
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


@pytest.mark.slow
@pytest.mark.needs(encoder_runtime.cxx_compiler() is not None,
                   "no C++ compiler for torch.compile (install g++)")
def test_compiled_embedder_matches_the_fast_path_and_pads_a_short_last_batch(trained_like_model):
    """Inductor-compiled (frozen) path: same embeddings within float rounding, incl. a 3-row tail batch."""
    windows = _windows(7, seed=2)
    fast = embed_batches(FastEmbedder(trained_like_model), windows, 4, "fp32")
    compiled = embed_batches(CompiledEmbedder(FastEmbedder(trained_like_model), 4), windows, 4, "fp32")
    assert compiled.shape == (7, 512)
    np.testing.assert_allclose(compiled, fast, rtol=1e-4, atol=1e-5 * np.abs(fast).max())


def test_compiled_embedder_refuses_a_batch_larger_than_it_was_built_for(trained_like_model):
    with pytest.raises(ValueError, match="batch size 2"):
        CompiledEmbedder(FastEmbedder(trained_like_model), 2)(torch.zeros(3, 1, 1250))


@pytest.mark.parametrize(("requested", "encodes", "expected"),
                         [("auto", 199_999, False), ("auto", 200_000, True), (True, 1, True), (False, 10**7, False)])
def test_compile_is_chosen_only_where_it_pays_back(monkeypatch, requested, encodes, expected):
    monkeypatch.setattr(encoder_runtime, "cxx_compiler", lambda: "g++")
    assert should_compile(requested, encodes) is expected


def test_without_a_cxx_compiler_auto_falls_back_and_true_is_refused(monkeypatch):
    monkeypatch.setattr(encoder_runtime, "cxx_compiler", lambda: None)
    assert should_compile("auto", 10**7) is False
    with pytest.raises(StsaeError, match=r"extract\.compile: true needs a C\+\+ compiler"):
        should_compile(True, 1)


def test_auto_precision_is_fp32_without_native_bf16(monkeypatch, trained_like_model):
    monkeypatch.setattr(encoder_runtime, "native_bf16", lambda: False)
    assert choose_precision("auto", FastEmbedder(trained_like_model), _windows(2), 2) == ("fp32", None)


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"),
                         [(False, False, False), (True, False, True), (False, True, True), (None, None, False)])
def test_native_bf16_means_bf16_instructions_not_onednn_emulation(monkeypatch, avx512_bf16, amx, expected):
    """oneDNN reports bf16 support on any AVX-512 CPU, where it emulates bf16 (1.85x slower than fp32
    here); only the CPU's own bf16 instructions count. A torch without the probes (None) means fp32."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    for name, flag in (("_is_avx512_bf16_supported", avx512_bf16), ("_is_amx_tile_supported", amx)):
        if flag is None:
            monkeypatch.delattr(torch.cpu, name, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, name, lambda flag=flag: flag, raising=False)
    assert encoder_runtime.native_bf16() is expected


@pytest.mark.parametrize(("bound", "expected"), [(-1.0, "bf16"), (1.5, "fp32")])
def test_auto_precision_takes_bf16_only_within_the_cosine_bound(monkeypatch, trained_like_model, bound,
                                                                 expected):
    monkeypatch.setattr(encoder_runtime, "native_bf16", lambda: True)
    monkeypatch.setattr(encoder_runtime, "MIN_BF16_COSINE", bound)
    precision, cosine = choose_precision("auto", FastEmbedder(trained_like_model), _windows(2), 2)
    assert precision == expected
    assert cosine is not None and 0.9 < cosine <= 1.0 + 1e-6


@given(length=st.integers(1, 5000), kernel=st.integers(1, 7), stride=st.integers(1, 4))
def test_same_padding_gives_ceil_length_over_stride(length, kernel, stride):
    left, right = same_padding(length, kernel, stride)
    out_len = (length + left + right - kernel) // stride + 1
    assert 0 <= right - left <= 1
    assert out_len == -(-length // stride)
