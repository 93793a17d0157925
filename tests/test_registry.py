"""Model registry: one numpy interface over ST-SAE checkpoints and baselines; only complete models listed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stsae.config import BaselinesSection
from stsae.errors import InputDataError
from stsae.models.baselines import ICABaseline, NMFBaseline, PCABaseline
from stsae.models.registry import (
    BaselineConceptModel,
    k_sparse_view,
    list_models,
    load_concept_model,
)
from stsae.models.stsae import STSAE
from stsae.rundir import RunDir
from stsae.train.grid import GridEntry

NO_BASELINES = BaselinesSection(methods=[], n_components=[])


def write_stsae(run_dir: RunDir, z_train: np.ndarray, variant: str, d_dict: int, seed: int, k: int = 4,
                complete: bool = True) -> Path:
    """An untrained (data-initialised) ST-SAE checkpoint in the train stage's file format."""
    model = STSAE(512, d_dict, "topk", k, generator=torch.Generator().manual_seed(seed))
    model.init_from_data(z_train, torch.Generator().manual_seed(seed))
    path = run_dir.stsae_checkpoint(variant, d_dict, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path, {"variant": variant, "seed": seed, "steps": 0, "complete": complete,
                      "train_config": {"d_dict": d_dict, "k": k, "steps": 5, "batch_size": 16}})
    return path


@pytest.fixture
def z() -> np.ndarray:
    gen = np.random.default_rng(0)
    return (gen.standard_normal((200, 8)) @ gen.standard_normal((8, 512)) + 3).astype(np.float32)


def test_list_models_finds_complete_checkpoints_and_baselines(tmp_path, z) -> None:
    run_dir = RunDir(tmp_path)
    write_stsae(run_dir, z, "full", 32, 0)
    write_stsae(run_dir, z, "full", 32, 1, complete=False)
    PCABaseline(4).fit(z).save(run_dir.baseline("pca", 4))
    infos = list_models(run_dir, BaselinesSection(methods=["pca"], n_components=[4]))
    assert [(i.name, i.family, i.variant, i.d_dict, i.seed) for i in infos] == [
        ("stsae-full-K32-s0", "stsae", "full", 32, 0), ("pca-n4", "pca", "pca", 4, 0)]


def test_stsae_and_baseline_share_one_numpy_interface(tmp_path, z) -> None:
    run_dir = RunDir(tmp_path)
    paths = [write_stsae(run_dir, z, "full", 32, 0), run_dir.baseline("ica", 4)]
    ICABaseline(4).fit(z).save(paths[1])
    for path, k in zip(paths, (32, 4), strict=True):
        model = load_concept_model(path, batch_size=64)
        codes = model.encode(z)
        assert codes.shape == (200, k) and codes.dtype == np.float32
        assert model.decode(codes).shape == (200, 512)
        np.testing.assert_allclose(np.linalg.norm(model.dictionary, axis=1), 1.0, rtol=1e-5)


def test_stsae_batched_encode_equals_one_batch(tmp_path, z) -> None:
    path = write_stsae(RunDir(tmp_path), z, "full", 32, 0)
    small, big = load_concept_model(path, batch_size=7), load_concept_model(path, batch_size=1000)
    np.testing.assert_allclose(small.encode(z), big.encode(z), atol=1e-5)


def test_stsae_metadata_comes_from_the_sidecar(tmp_path, z) -> None:
    path = write_stsae(RunDir(tmp_path), z, "no_div", 32, 5)
    model = load_concept_model(path)
    assert (model.name, model.family, model.variant, model.d_dict, model.seed) == (
        "stsae-no_div-K32-s5", "stsae", "no_div", 32, 5)


def test_incomplete_checkpoint_is_refused_naming_the_sidecar(tmp_path, z) -> None:
    path = write_stsae(RunDir(tmp_path), z, "full", 32, 0)
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "complete": False}))
    with pytest.raises(InputDataError, match=r"stsae-full-K32-s0\.json"):
        load_concept_model(path)


def test_unknown_model_file_type_is_refused(tmp_path) -> None:
    with pytest.raises(InputDataError, match="unknown model file type"):
        load_concept_model(tmp_path / "model.pt")
    with pytest.raises(InputDataError, match="unknown model file type"):
        load_concept_model(tmp_path / "pca-n4.joblib")


def test_only_configured_baselines_are_listed_by_name(tmp_path, z) -> None:
    run_dir = RunDir(tmp_path)
    for n in (4, 6):
        PCABaseline(n).fit(z).save(run_dir.baseline("pca", n))
    (run_dir.baselines_dir / "zz-extra.joblib").write_bytes(b"not opened")
    infos = list_models(run_dir, BaselinesSection(methods=["pca"], n_components=[6]))
    assert [info.name for info in infos] == ["pca-n6"]


def test_a_configured_baseline_that_is_missing_names_the_file(tmp_path, z) -> None:
    with pytest.raises(InputDataError, match=r"ica-n4\.safetensors.*stsae baselines"):
        list_models(RunDir(tmp_path), BaselinesSection(methods=["ica"], n_components=[4]))


def test_a_renamed_baseline_file_is_refused(tmp_path, z) -> None:
    run_dir = RunDir(tmp_path)
    PCABaseline(4).fit(z).save(run_dir.baseline("pca", 4))
    for suffix in (".safetensors", ".json"):
        run_dir.baseline("pca", 4).with_suffix(suffix).rename(run_dir.baseline("pca", 6).with_suffix(suffix))
    with pytest.raises(InputDataError, match=r"pca-n6\.json.*expected pca with 6"):
        list_models(run_dir, BaselinesSection(methods=["pca"], n_components=[6]))


def test_k_sparse_view_encodes_at_most_k_codes_per_row(tmp_path, z) -> None:
    path = RunDir(tmp_path).baseline("ica", 6)
    ICABaseline(6).fit(z).save(path)
    model = k_sparse_view(load_concept_model(path, batch_size=64), 2)
    codes = model.encode(z)
    assert codes.shape == (200, 6) and (np.count_nonzero(codes, axis=1) <= 2).all()
    assert model.name == "ica-n6"


def test_k_sparse_view_shares_the_loaded_baseline_and_encodes_its_k_sparse_codes(tmp_path, z) -> None:
    path = RunDir(tmp_path).baseline("nmf", 6)
    NMFBaseline(6, max_iter=100).fit(z).save(path)
    dense = load_concept_model(path, batch_size=64)
    assert isinstance(dense, BaselineConceptModel)
    view = k_sparse_view(dense, 2)
    assert view.baseline is dense.baseline and view.name == "nmf-n6"
    np.testing.assert_array_equal(view.encode(z[:64]), dense.baseline.encode_k_sparse(z[:64], 2))


def test_k_sparse_view_of_an_stsae_is_refused(tmp_path, z) -> None:
    path = write_stsae(RunDir(tmp_path), z, "full", 32, 0)
    with pytest.raises(InputDataError, match="baselines only"):
        k_sparse_view(load_concept_model(path), 2)


def test_list_models_with_a_grid_lists_only_its_stsae_models_and_never_stale_ones(tmp_path, z) -> None:
    run_dir = RunDir(tmp_path)
    write_stsae(run_dir, z, "full", 32, 0)
    write_stsae(run_dir, z, "full", 16, 0)
    stale = run_dir.stale_models_dir
    stale.mkdir(parents=True)
    old = write_stsae(RunDir(tmp_path / "elsewhere"), z, "full", 8, 0)
    for path in (old, old.with_suffix(".json")):
        path.rename(stale / path.name)
    assert [i.name for i in list_models(run_dir, NO_BASELINES)] == ["stsae-full-K16-s0", "stsae-full-K32-s0"]
    assert [i.name for i in list_models(run_dir, NO_BASELINES, [GridEntry("full", 32, 0)])] == ["stsae-full-K32-s0"]
