"""Baselines: sklearn-style affine dictionaries, unit-norm atoms, exact NNLS codes, matched-sparsity
re-encoding, safetensors + JSON files (never pickle), parameter validation."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from scipy.optimize import nnls

from stsae.errors import InputDataError
from stsae.models.baselines import (
    AffineDictionary,
    BaselineError,
    ICABaseline,
    NMFBaseline,
    PCABaseline,
    load_baseline,
    make_baseline,
)
from test_metrics import top_k_codes

METHODS = ("pca", "ica", "nmf")


def _low_rank_z(n: int = 300, rank: int = 6, seed: int = 0) -> np.ndarray:
    gen = np.random.default_rng(seed)
    z = gen.standard_normal((n, rank)) @ gen.standard_normal((rank, 512)) + 5.0
    return (z + 0.01 * gen.standard_normal((n, 512))).astype(np.float32)


def _ev(z: np.ndarray, z_hat: np.ndarray) -> float:
    return 1.0 - float(((z - z_hat) ** 2).sum() / ((z - z.mean(0)) ** 2).sum())


class MarkerPayload:
    """Unpickling this creates `path`: proof that a file was unpickled."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize(("method", "cls"), [("pca", PCABaseline), ("ica", ICABaseline), ("nmf", NMFBaseline)])
def test_each_method_is_its_own_affine_dictionary_subclass(method: str, cls: type) -> None:
    model = make_baseline(method, 4)
    assert type(model) is cls and isinstance(model, AffineDictionary) and model.method == method


@pytest.mark.parametrize("method", METHODS)
def test_fitted_attributes_end_in_underscore_and_appear_only_after_fit(method: str) -> None:
    model = make_baseline(method, 4, max_iter=200)
    assert not hasattr(model, "components_")
    with pytest.raises(BaselineError, match="not fitted"):
        model.transform(_low_rank_z()[:3])
    model.fit(_low_rank_z())
    for name in model.fitted_arrays:
        assert name.endswith("_") and getattr(model, name).dtype == np.float32


@pytest.mark.parametrize("method", METHODS)
def test_dictionary_rows_are_unit_norm_in_z_space(method: str) -> None:
    model = make_baseline(method, 4, max_iter=200).fit(_low_rank_z())
    assert model.dictionary.shape == (4, 512) and model.dictionary.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(model.dictionary, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_inverse_transform_is_codes_times_components_plus_offset(method: str) -> None:
    z = _low_rank_z()
    model = make_baseline(method, 4, max_iter=200).fit(z)
    codes = model.transform(z[:10])
    np.testing.assert_allclose(model.inverse_transform(codes), codes @ model.components_ + model.offset_, atol=1e-3)
    np.testing.assert_array_equal(model.encode(z[:10]), codes)


def test_pca_with_enough_components_reconstructs_low_rank_data() -> None:
    z = _low_rank_z()
    model = PCABaseline(6).fit(z)
    assert _ev(z, model.decode(model.encode(z))) > 0.99


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_ica_codes_reproduce_sklearn_reconstruction() -> None:
    from sklearn.decomposition import FastICA

    z = _low_rank_z()
    model = ICABaseline(4, seed=7, max_iter=300).fit(z)
    est = FastICA(4, whiten="unit-variance", max_iter=300, random_state=7).fit(z)
    np.testing.assert_allclose(model.decode(model.encode(z)), est.inverse_transform(est.transform(z)), atol=1e-3)


def test_nmf_codes_are_exact_nnls_of_the_shifted_data() -> None:
    z = _low_rank_z()
    model = NMFBaseline(5, max_iter=200).fit(z)
    codes = model.transform(z[:20])
    target = np.maximum(z[:20].astype(np.float64) - model.shift_, 0)
    reference = np.stack([nnls(model.components_.T.astype(np.float64), row, maxiter=10_000)[0] for row in target])
    np.testing.assert_allclose(codes, reference, atol=1e-4 * np.abs(reference).max())


def test_nmf_codes_are_non_negative_even_below_train_minimum() -> None:
    model = NMFBaseline(4, max_iter=200).fit(_low_rank_z())
    assert (model.encode(_low_rank_z() - 100.0) >= 0).all()


def test_k_sparse_pca_is_the_best_k_sparse_code_and_matches_the_pursuit() -> None:
    """PCA's k-sparse codes (truncation) reach the lowest error over every 3-atom support (brute force)
    and equal the general pursuit-and-refit path of the base class."""
    z = _low_rank_z(rank=12)
    model = PCABaseline(8).fit(z)
    sparse = model.encode_k_sparse(z[:40], 3)
    np.testing.assert_allclose(sparse, AffineDictionary._k_sparse_codes(model, z[:40], 3), atol=1e-4)
    atoms, target = model.components_.astype(np.float64), z[:40].astype(np.float64) - model.mean_
    best = np.full(40, np.inf)
    for support in itertools.combinations(range(8), 3):
        sub = atoms[list(support)]
        coef = np.linalg.lstsq(sub.T, target.T, rcond=None)[0].T
        best = np.minimum(best, ((target - coef @ sub) ** 2).sum(1))
    err = ((z[:40] - model.decode(sparse)) ** 2).sum(1)
    assert (np.count_nonzero(sparse, axis=1) == 3).all()
    np.testing.assert_allclose(err, best, rtol=1e-4, atol=1e-3)


def _planted_model(cls: type[AffineDictionary], seed: int = 0) -> tuple[AffineDictionary, np.ndarray, np.ndarray]:
    """A model whose dictionary is 24 coherent unit atoms (shared positive direction, as NMF atoms are),
    and z with 3 planted non-negative codes per row on them: (model, z, planted support)."""
    gen = np.random.default_rng(seed)
    atoms = np.abs(gen.standard_normal((24, 512))) + 0.3 * gen.standard_normal((24, 512))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    support = np.zeros((200, 24), dtype=bool)
    np.put_along_axis(support, np.argsort(gen.random((200, 24)), axis=1)[:, :3], True, axis=1)
    codes = np.where(support, gen.uniform(1.0, 3.0, support.shape), 0.0)
    offset = np.full(512, -0.5)
    model = cls(24)
    model.components_ = atoms.astype(np.float32)
    setattr(model, model.offset_name, offset.astype(np.float32))
    if isinstance(model, ICABaseline):
        model.unmixing_ = np.linalg.pinv(atoms.T).astype(np.float32)
    return model, (codes @ atoms + offset).astype(np.float32), support


@pytest.mark.parametrize("cls", [ICABaseline, NMFBaseline])
def test_k_sparse_reencoding_recovers_planted_support_and_beats_truncation(cls: type[AffineDictionary]) -> None:
    model, z, support = _planted_model(cls)
    sparse = model.encode_k_sparse(z, 3)
    truncated = top_k_codes(model.encode(z), 3)
    assert (np.count_nonzero(sparse, axis=1) <= 3).all()
    assert (sparse != 0).sum() >= 0.97 * support.sum()
    assert ((sparse != 0) == support).all(axis=1).mean() >= 0.95
    ev_sparse, ev_truncated = _ev(z, model.decode(sparse)), _ev(z, model.decode(truncated))
    assert ev_sparse >= ev_truncated and ev_sparse > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_k_sparse_is_never_worse_than_truncation_row_by_row(method: str) -> None:
    z = _low_rank_z(rank=12)
    model = make_baseline(method, 10, max_iter=300).fit(z)
    err_sparse = ((z - model.decode(model.encode_k_sparse(z, 2))) ** 2).sum(1)
    err_truncated = ((z - model.decode(top_k_codes(model.encode(z), 2))) ** 2).sum(1)
    assert (err_sparse <= err_truncated * (1 + 1e-4) + 1e-3).all()


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_k_sparse_rejects_a_bad_k(k: object) -> None:
    with pytest.raises(BaselineError, match="k: must be a positive int"):
        PCABaseline(4).fit(_low_rank_z()).encode_k_sparse(_low_rank_z()[:2], k)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
def test_save_writes_safetensors_and_json_and_round_trips(method: str, tmp_path) -> None:
    z = _low_rank_z()
    model = make_baseline(method, 4, seed=3, max_iter=200).fit(z)
    path = tmp_path / f"{model.name}.safetensors"
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{model.name}.json", f"{model.name}.safetensors"]
    loaded = load_baseline(path)
    assert (type(loaded), loaded.n_components, loaded.seed, loaded.max_iter) == (type(model), 4, 3, 200)
    np.testing.assert_array_equal(loaded.encode(z[:20]), model.encode(z[:20]))
    np.testing.assert_array_equal(loaded.dictionary, model.dictionary)


def test_a_pickle_in_place_of_the_arrays_is_refused_and_never_run(tmp_path) -> None:
    path = tmp_path / "pca-n4.safetensors"
    PCABaseline(4).fit(_low_rank_z()).save(path)
    marker = tmp_path / "unpickled"
    path.write_bytes(pickle.dumps(MarkerPayload(str(marker))))
    with pytest.raises(InputDataError, match=r"pca-n4\.safetensors"):
        load_baseline(path)
    assert not marker.exists()


def test_a_sidecar_of_another_format_names_the_file(tmp_path) -> None:
    path = tmp_path / "pca-n4.safetensors"
    PCABaseline(4).fit(_low_rank_z()).save(path)
    path.with_suffix(".json").write_text('{"format": "stsae-baseline-v1"}')
    with pytest.raises(InputDataError, match=r"pca-n4\.json.*format"):
        load_baseline(path)


def test_arrays_of_the_wrong_shape_are_refused_naming_the_array(tmp_path) -> None:
    path = tmp_path / "pca-n4.safetensors"
    PCABaseline(4).fit(_low_rank_z()).save(path)
    PCABaseline(5).fit(_low_rank_z()).save(tmp_path / "other.safetensors")
    (tmp_path / "other.safetensors").replace(path)
    with pytest.raises(InputDataError, match="components_"):
        load_baseline(path)


@pytest.mark.parametrize(("method", "kwargs", "key"), [
    ("svd", {"n_components": 4}, "baselines.methods"),
    ("pca", {"n_components": 0}, "baselines.n_components"),
    ("pca", {"n_components": 600}, "baselines.n_components"),
    ("ica", {"n_components": 4, "max_iter": 0}, "baselines.max_iter"),
])
def test_invalid_parameters_fail_at_fit_naming_the_config_key(method: str, kwargs: dict, key: str) -> None:
    with pytest.raises(BaselineError, match=key):
        make_baseline(method, **kwargs).fit(_low_rank_z())


def test_wrong_embedding_width_is_rejected() -> None:
    with pytest.raises(BaselineError, match=r"float32\[N, 512\]"):
        PCABaseline(2).fit(np.zeros((10, 100), dtype=np.float32))


@pytest.mark.parametrize(("budget", "computed"), [(1 << 20, 1), (10, 2)])
def test_remembered_dense_codes_serve_the_k_sparse_pass_unchanged(monkeypatch: pytest.MonkeyPatch, budget: int,
                                                                 computed: int) -> None:
    """The evaluate stage's reuse of NMF's dense codes: same codes, one NNLS per batch while the budget
    lasts, recomputed beyond it."""
    z = _low_rank_z(rank=12)
    model = NMFBaseline(10, max_iter=200).fit(z)
    dense, sparse = model.transform(z), model.encode_k_sparse(z, 3)
    calls: list[int] = []
    original = model._dense_codes
    monkeypatch.setattr(model, "_dense_codes", lambda x: calls.append(len(x)) or original(x))
    model.remember_dense_codes(budget)
    np.testing.assert_array_equal(model.transform(z), dense)
    np.testing.assert_array_equal(model.encode_k_sparse(z, 3), sparse)
    assert calls == [len(z)] * computed
    model.encode_k_sparse(z[:50], 3)
    assert calls[-1] == 50
