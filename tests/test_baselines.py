"""Baselines: shared fit/encode/decode interface, unit-norm dictionaries, validation, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from stsae.models.baselines import Baseline, BaselineError


def _low_rank_z(n: int = 300, rank: int = 6, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    z = gen.standard_normal((n, rank)) @ gen.standard_normal((rank, 512)) + 5.0
    return (z + 0.01 * gen.standard_normal((n, 512))).astype(np.float32)


@pytest.mark.parametrize("method", ["pca", "ica", "nmf"])
def test_dictionary_rows_are_unit_norm_in_z_space(method: str) -> None:
    model = Baseline(method, 4, seed=0, max_iter=200).fit(_low_rank_z())
    assert model.dictionary.shape == (4, 512) and model.dictionary.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(model.dictionary, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", ["pca", "ica", "nmf"])
def test_decode_is_codes_times_dictionary_plus_offset(method: str) -> None:
    z = _low_rank_z()
    model = Baseline(method, 4, seed=0, max_iter=200).fit(z)
    codes = model.encode(z[:10])
    np.testing.assert_allclose(model.decode(codes), codes @ model.dictionary + model.offset, atol=1e-3)


def test_pca_with_enough_components_reconstructs_low_rank_data() -> None:
    z = _low_rank_z()
    model = Baseline("pca", 6).fit(z)
    residual = np.linalg.norm(z - model.decode(model.encode(z))) / np.linalg.norm(z - z.mean(0))
    assert residual < 0.05


def test_nmf_codes_are_non_negative_even_below_train_minimum() -> None:
    z = _low_rank_z()
    model = Baseline("nmf", 4, max_iter=200).fit(z)
    assert (model.encode(z - 100.0) >= 0).all()


@pytest.mark.parametrize("method", ["pca", "ica", "nmf"])
def test_save_load_round_trip_gives_identical_codes(method: str, tmp_path) -> None:
    z = _low_rank_z()
    model = Baseline(method, 4, seed=3, max_iter=200).fit(z)
    path = tmp_path / f"{model.name}.joblib"
    model.save(path)
    loaded = Baseline.load(path)
    assert (loaded.method, loaded.n_components, loaded.seed) == (method, 4, 3)
    np.testing.assert_array_equal(loaded.encode(z[:20]), model.encode(z[:20]))
    np.testing.assert_array_equal(loaded.dictionary, model.dictionary)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"method": "svd", "n_components": 4}, "baselines.methods"),
    ({"method": "pca", "n_components": 0}, "baselines.n_components"),
    ({"method": "pca", "n_components": 600}, "baselines.n_components"),
    ({"method": "ica", "n_components": 4, "max_iter": 0}, "baselines.max_iter"),
])
def test_invalid_parameters_fail_at_fit_naming_the_config_key(kwargs: dict, key: str) -> None:
    with pytest.raises(BaselineError, match=key):
        Baseline(**kwargs).fit(_low_rank_z())


def test_wrong_embedding_width_is_rejected() -> None:
    with pytest.raises(BaselineError, match=r"float32\[N, 512\]"):
        Baseline("pca", 2).fit(np.zeros((10, 100), dtype=np.float32))


def test_loading_a_foreign_joblib_names_the_file(tmp_path) -> None:
    import joblib

    from stsae.errors import InputDataError

    path = tmp_path / "other.joblib"
    joblib.dump({"hello": 1}, path)
    with pytest.raises(InputDataError, match=r"other\.joblib"):
        Baseline.load(path)
