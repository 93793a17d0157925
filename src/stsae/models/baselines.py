"""PCA, FastICA and NMF baselines as scikit-learn-style affine dictionaries, saved without pickle.

Every baseline is an affine dictionary model in raw z space:

    ẑ = codes @ components_ + offset_,   components_: float32[n, 512] with unit-norm rows,

so the evaluator treats all models alike and `|codes[:, j]|` is the length of atom j's contribution to
the reconstruction. `fit(z)` / `transform(z)` / `inverse_transform(codes)` follow scikit-learn (fitted
attributes end in `_`, parameters are validated at fit and errors name the config key); `encode`,
`decode` and `dictionary` are the ST-SAE names of the same three things.

- PCA: offset_ = mean_ (train mean), atoms = principal axes; codes = (z − mean_) @ components_ᵀ.
- FastICA: offset_ = mean_, atoms = mixing-matrix columns scaled to unit norm; codes = the independent
  sources times those column norms (`unmixing_` holds the scaled unmixing matrix), so ẑ is unchanged.
- NMF: fit on the shifted data z − shift_, shift_ = per-feature train minimum (every train value ≥ 0),
  by extrapolated HALS (`stsae.models.nmf.nmf_hals`: scikit-learn's objective, a relative-objective
  stopping rule; on the demo's train rows 3.2–6.7× less CPU than scikit-learn's coordinate descent at
  max_iter 300, ending 0.6–1.4 % lower: benchmarks/bench_nmf.py);
  offset_ = shift_. Rows later seen below shift_ are clipped at 0. Codes are the exact non-negative
  least-squares fit of z − shift_ on the unit-norm atoms (batched block principal pivoting on the Gram
  matrix; NMF's own coordinate-descent transform stops at an iteration cap and is slower).

`encode_k_sparse(z, k)` re-encodes with at most k nonzero codes on the model's own dictionary (the
matched-sparsity comparison with the ST-SAE), offset kept: see its docstring.

Files: `<name>.safetensors` (the fitted arrays) + `<name>.json` (method, parameters, array names, and
`fit`: how the iterative fit ended — `fit_info_`).
Nothing is unpickled, so a run directory copied from elsewhere cannot run code through a model file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from stsae.errors import InputDataError, StsaeError
from stsae.models.nmf import DEFAULT_TOL as NMF_TOL
from stsae.models.nmf import DEFAULT_WINDOW as NMF_WINDOW
from stsae.models.nmf import nmf_hals
from stsae.models.sparse_coding import greedy_pursuit, least_squares_on_support, nnls_gram, objective, top_k_support
from stsae.models.stsae import CheckpointError, read_safetensors, safetensors_bytes
from stsae.utils import io

log = logging.getLogger(__name__)

Method = Literal["pca", "ica", "nmf"]
METHODS: tuple[Method, ...] = ("pca", "ica", "nmf")
EMBEDDING_DIM = 512
BASELINE_FORMAT = "stsae-baseline-v2"


class BaselineError(StsaeError, ValueError):
    """A baseline parameter or input is invalid; the message names the parameter."""


def _check_z(z: np.ndarray, name: str = "z") -> np.ndarray:
    """Return z as float32[N, 512] (a copy only if needed), or raise naming the argument."""
    if z.ndim != 2 or z.shape[1] != EMBEDDING_DIM:
        raise BaselineError(f"{name}: expected float32[N, {EMBEDDING_DIM}], got shape {list(z.shape)}")
    return np.asarray(z, dtype=np.float32)


def _unit_rows(atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(atoms with unit-norm rows as float32, the original norms as float64; a zero row keeps norm 1)."""
    norms = np.linalg.norm(atoms, axis=1)
    norms = np.where(norms > 0, norms, 1.0)
    return (atoms / norms[:, None]).astype(np.float32), norms


class AffineDictionary(ABC):
    """Base of the baselines: ẑ = codes @ components_ + offset_ with unit-norm atoms (see module doc).

    Parameters: n_components (atoms, config `baselines.n_components`), seed (random state of the fit),
    max_iter (iteration cap of ICA / NMF fits, `baselines.max_iter`).
    """

    method: ClassVar[Method]
    non_negative: ClassVar[bool] = False
    offset_name: ClassVar[str]  # the fitted float32[512] attribute that is offset_ (mean_ or shift_)
    fitted_arrays: ClassVar[tuple[str, ...]]  # attributes saved to / loaded from safetensors

    components_: np.ndarray  # float32[n, 512], unit-norm rows
    fit_info_: dict[str, Any]  # how the fit ended (iterations, convergence), saved in the JSON sidecar

    def __init__(self, n_components: int = 8, *, seed: int = 0, max_iter: int = 400):
        self.n_components = n_components
        self.seed = seed
        self.max_iter = max_iter
        self._memo: dict[bytes, np.ndarray] | None = None  # dense codes by input bytes (`remember_dense_codes`)
        self._memo_budget = 0

    @property
    def name(self) -> str:
        """File stem used under models/baselines/: `<method>-n<n>`."""
        return f"{self.method}-n{self.n_components}"

    @property
    def offset_(self) -> np.ndarray:
        """float32[512]: the part of ẑ that no code carries (never dropped by sparsification)."""
        return getattr(self, self.offset_name)

    @abstractmethod
    def _fit(self, z: np.ndarray) -> None:
        """Set the fitted attributes from validated, finite z: float32[N, 512]."""

    @abstractmethod
    def _dense_codes(self, z: np.ndarray) -> np.ndarray:
        """z: float32[N, 512] (checked) -> float32[N, n] dense codes."""

    def _validate_params(self, n_rows: int) -> None:
        if not isinstance(self.n_components, int) or self.n_components < 1:
            raise BaselineError(f"baselines.n_components: must be a positive int, got {self.n_components!r}")
        limit = min(n_rows, EMBEDDING_DIM)
        if self.n_components > limit:
            raise BaselineError(
                f"baselines.n_components: {self.n_components} exceeds min(train rows, 512) = {limit}")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise BaselineError(f"baselines.max_iter: must be a positive int, got {self.max_iter!r}")

    def fit(self, z: np.ndarray) -> Self:
        """Fit on z: float32[N, 512] (train rows). Returns self."""
        z = _check_z(z)
        self._validate_params(z.shape[0])
        if not np.isfinite(z).all():
            raise InputDataError("z: training embeddings contain NaN or inf")
        self.fit_info_ = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            self._fit(z)
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                log.warning("%s: %s (raise baselines.max_iter)", self.name, warning.message)
                self.fit_info_["converged"] = False
        return self

    def _require_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise BaselineError(f"{self.name}: not fitted (call fit first)")

    @property
    def dictionary(self) -> np.ndarray:
        """float32[n, 512], unit-norm rows in z space (= components_)."""
        self._require_fitted()
        return self.components_

    def transform(self, z: np.ndarray) -> np.ndarray:
        """z: float32[N, 512] -> dense codes float32[N, n] (in units of the unit-norm atoms)."""
        self._require_fitted()
        return self._remembered_dense_codes(_check_z(z)).astype(np.float32)

    def remember_dense_codes(self, max_bytes: int) -> None:
        """From now on keep the dense codes of each input batch (keyed by its bytes), up to `max_bytes` in
        all, so that `encode_k_sparse` of the same batches reuses them for its top-k support. Why: NMF's
        dense codes are an exact NNLS per row, and the evaluate stage encodes every row densely and then
        k-sparse (nmf-n128: 1.6 s per 6,000 rows, a quarter of its k-sparse re-encoding)."""
        self._memo, self._memo_budget = {}, max_bytes

    def _remembered_dense_codes(self, z: np.ndarray) -> np.ndarray:
        """`_dense_codes(z)`, from the memo when this batch was seen (read-only: callers never write it)."""
        if self._memo is None:
            return self._dense_codes(z)
        z = np.ascontiguousarray(z)
        key = hashlib.blake2b(z.data, digest_size=16).digest() + str(z.shape).encode()
        if key not in self._memo:
            codes = self._dense_codes(z)
            if codes.nbytes > self._memo_budget:
                return codes
            self._memo[key], self._memo_budget = codes, self._memo_budget - codes.nbytes
        return self._memo[key]

    def inverse_transform(self, codes: np.ndarray) -> np.ndarray:
        """codes: float32[N, n] -> ẑ float32[N, 512] = codes @ components_ + offset_."""
        self._require_fitted()
        if codes.ndim != 2 or codes.shape[1] != self.n_components:
            raise BaselineError(f"codes: expected float32[N, {self.n_components}], got {list(codes.shape)}")
        return (np.asarray(codes, dtype=np.float32) @ self.components_ + self.offset_).astype(np.float32)

    encode = transform
    decode = inverse_transform

    def _target(self, z: np.ndarray) -> np.ndarray:
        """float64[N, 512]: what the codes reconstruct, z − offset_."""
        return z.astype(np.float64) - self.offset_

    def encode_k_sparse(self, z: np.ndarray, k: int) -> np.ndarray:
        """z: float32[N, 512] -> codes float32[N, n] with at most k nonzeros per row, offset_ kept.

        Truncating dense codes to their top k is optimal only for an orthonormal dictionary (PCA).
        Here each row takes the better (lower squared error) of two k-atom supports, each refit by
        least squares on the model's own atoms (non-negative for NMF): the greedy pursuit's support
        (orthogonal matching pursuit; for NMF the Lawson–Hanson active set stopped at k atoms) and
        the top-k support of the dense codes. So the result is never worse than truncation; for PCA
        (orthonormal atoms) it equals truncation, which `PCABaseline` therefore computes directly.
        """
        self._require_fitted()
        if not isinstance(k, int) or k < 1:
            raise BaselineError(f"k: must be a positive int, got {k!r}")
        return self._k_sparse_codes(_check_z(z), k)

    def _k_sparse_codes(self, z: np.ndarray, k: int) -> np.ndarray:
        """`encode_k_sparse` on checked z: float32[N, 512], k ≥ 1 -> float32[N, n]."""
        atoms = self.components_.astype(np.float64)
        gram, b = atoms @ atoms.T, self._target(z) @ atoms.T
        greedy = greedy_pursuit(gram, b, k, non_negative=self.non_negative)
        support = top_k_support(self._remembered_dense_codes(z), k)
        refit = nnls_gram(gram, b, allowed=support) if self.non_negative else least_squares_on_support(
            gram, b, support)
        better = objective(gram, b, refit) < objective(gram, b, greedy)
        return np.where(better[:, None], refit, greedy).astype(np.float32)

    def save(self, path: Path | str) -> None:
        """Write `<stem>.safetensors` (fitted arrays) then `<stem>.json` (method and parameters), atomically."""
        self._require_fitted()
        path = Path(path)
        tensors = {key: torch.from_numpy(np.ascontiguousarray(getattr(self, key))) for key in self.fitted_arrays}
        io.write_bytes(path, safetensors_bytes(tensors, {"format": BASELINE_FORMAT, "method": self.method}))
        io.write_json(sidecar_path(path), {
            "format": BASELINE_FORMAT, "method": self.method, "n_components": self.n_components, "seed": self.seed,
            "max_iter": self.max_iter, "arrays": {key: list(getattr(self, key).shape) for key in self.fitted_arrays},
            "fit": getattr(self, "fit_info_", {}),
        })

    def _set_arrays(self, arrays: dict[str, np.ndarray], source: Path) -> None:
        """Set the fitted attributes from loaded arrays, refusing missing names or wrong shapes."""
        for key in self.fitted_arrays:
            if key not in arrays:
                raise InputDataError(f"{source}: missing array {key!r}")
            expected = self._expected_shape(key)
            if arrays[key].shape != expected:
                raise InputDataError(
                    f"{source}: array {key!r} has shape {list(arrays[key].shape)}, expected {list(expected)}")
            setattr(self, key, arrays[key].astype(np.float32))

    def _expected_shape(self, key: str) -> tuple[int, ...]:
        return (EMBEDDING_DIM,) if key == self.offset_name else (self.n_components, EMBEDDING_DIM)


class PCABaseline(AffineDictionary):
    """PCA: codes are projections on the principal axes (an orthonormal dictionary)."""

    method = "pca"
    offset_name = "mean_"
    fitted_arrays = ("components_", "mean_")
    mean_: np.ndarray

    def _fit(self, z: np.ndarray) -> None:
        est = PCA(n_components=self.n_components, svd_solver="full", random_state=self.seed % 2**32).fit(z)
        self.components_, _ = _unit_rows(est.components_)
        self.mean_ = est.mean_.astype(np.float32)

    def _dense_codes(self, z: np.ndarray) -> np.ndarray:
        return (z - self.mean_) @ self.components_.T

    def _k_sparse_codes(self, z: np.ndarray, k: int) -> np.ndarray:
        """Truncation, exactly: with orthonormal atoms ‖y − xD‖² = ‖y − cD‖² + ‖c − x‖² (c the dense
        projections), so the best k-sparse x keeps the k largest |c|. The pursuit of the base class
        finds the same codes at ~40× the cost (1 s vs 25 ms for 6,000 rows at n = 128)."""
        codes = self._remembered_dense_codes(z)
        return np.where(top_k_support(codes, k), codes, 0.0).astype(np.float32)


class ICABaseline(AffineDictionary):
    """FastICA: codes are the independent sources, scaled so the atoms (mixing columns) have unit norm."""

    method = "ica"
    offset_name = "mean_"
    fitted_arrays = ("components_", "mean_", "unmixing_")
    mean_: np.ndarray
    unmixing_: np.ndarray  # float32[n, 512]: codes = (z − mean_) @ unmixing_ᵀ

    def _fit(self, z: np.ndarray) -> None:
        # One BLAS thread: FastICA's iterations then do not depend on the machine's core count (2 threads
        # took 184 iterations where 1 took 138 on the same demo rows) and, on its small products, run
        # faster (demo n = 128: 2.1 s vs 7.5 s; at 60k rows 1.3× slower for n = 32, faster for n = 128).
        with threadpool_limits(limits=1, user_api="blas"):
            est = FastICA(n_components=self.n_components, whiten="unit-variance", max_iter=self.max_iter,
                          random_state=self.seed % 2**32).fit(z)
        self.components_, norms = _unit_rows(est.mixing_.T)
        self.mean_ = est.mean_.astype(np.float32)
        self.unmixing_ = (est.components_ * norms[:, None]).astype(np.float32)
        self.fit_info_ = {"solver": "sklearn-fastica", "n_iter": int(est.n_iter_), "converged": True}

    def _dense_codes(self, z: np.ndarray) -> np.ndarray:
        return (z - self.mean_) @ self.unmixing_.T


class NMFBaseline(AffineDictionary):
    """NMF on z − shift_: non-negative codes, exact NNLS at transform time.

    The fit stops when ½‖X − WH‖² fell by less than `TOL` (relative) over the last `WINDOW` iterations,
    or at max_iter (logged as a warning); `fit_info_` records iterations, convergence and the objective.
    """

    method = "nmf"
    non_negative = True
    offset_name = "shift_"
    fitted_arrays = ("components_", "shift_")
    shift_: np.ndarray  # float32[512] per-feature train minimum
    TOL: ClassVar[float] = NMF_TOL
    WINDOW: ClassVar[int] = NMF_WINDOW

    def _fit(self, z: np.ndarray) -> None:
        self.shift_ = z.min(axis=0)
        result = nmf_hals(z - self.shift_, self.n_components, max_iter=self.max_iter, tol=self.TOL,
                          window=self.WINDOW)
        self.components_, _ = _unit_rows(result.h)
        self.fit_info_ = {"solver": "hals-extrapolated", "n_iter": result.n_iter, "converged": result.converged,
                          "tol": self.TOL, "window": self.WINDOW, "objective": result.objective}
        if not result.converged:
            log.warning("%s: NMF stopped at baselines.max_iter = %d before its objective settled (relative "
                        "change over %d iterations > %g); raise baselines.max_iter", self.name, self.max_iter,
                        self.WINDOW, self.TOL)

    def _target(self, z: np.ndarray) -> np.ndarray:
        shifted = super()._target(z)
        below = shifted < 0
        if below.any():
            log.debug("%s: clipped %.3g%% of values below the train minimum", self.name, 100 * below.mean())
        return np.maximum(shifted, 0.0)

    def _dense_codes(self, z: np.ndarray) -> np.ndarray:
        atoms = self.components_.astype(np.float64)
        return nnls_gram(atoms @ atoms.T, self._target(z) @ atoms.T)


BASELINE_CLASSES: dict[str, type[AffineDictionary]] = {cls.method: cls for cls in
                                                       (PCABaseline, ICABaseline, NMFBaseline)}


def make_baseline(method: str, n_components: int, *, seed: int = 0, max_iter: int = 400) -> AffineDictionary:
    """The unfitted baseline of `method`; an unknown method names the config key."""
    if method not in BASELINE_CLASSES:
        raise BaselineError(f"baselines.methods: unknown method {method!r} (choose from {list(METHODS)})")
    return BASELINE_CLASSES[method](n_components, seed=seed, max_iter=max_iter)


def sidecar_path(path: Path) -> Path:
    """The `.json` written beside a baseline's `.safetensors`."""
    return path.with_suffix(".json")


def read_baseline_sidecar(path: Path) -> dict[str, Any]:
    """The validated `.json` sidecar of a baseline (method, n_components, seed, max_iter)."""
    side = sidecar_path(path)
    if not side.is_file() or not path.is_file():
        raise InputDataError(f"{path}: missing (or its .json sidecar is) — run `stsae baselines` first")
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{side}: not valid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != BASELINE_FORMAT:
        raise InputDataError(f"{side}: not a stsae baseline (field 'format' != {BASELINE_FORMAT!r})")
    missing = [key for key in ("method", "n_components", "seed", "max_iter") if key not in meta]
    if missing:
        raise InputDataError(f"{side}: missing field(s) {missing}")
    if meta["method"] not in BASELINE_CLASSES:
        raise InputDataError(f"{side}: field 'method' is {meta['method']!r}, expected one of {list(METHODS)}")
    return meta


def load_baseline(path: Path | str) -> AffineDictionary:
    """Read a baseline written by `save` (safetensors + JSON only: nothing is unpickled)."""
    path = Path(path)
    meta = read_baseline_sidecar(path)
    model = make_baseline(meta["method"], int(meta["n_components"]), seed=int(meta["seed"]),
                          max_iter=int(meta["max_iter"]))
    try:
        tensors, _ = read_safetensors(path)
    except CheckpointError as exc:
        raise InputDataError(str(exc)) from None
    model._set_arrays({key: value.numpy() for key, value in tensors.items()}, path)
    model.fit_info_ = dict(meta.get("fit", {}))
    return model
