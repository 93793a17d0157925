"""PCA, FastICA and NMF baselines behind the same `fit / encode / decode` interface as the ST-SAE.

Every baseline is written as an affine dictionary model in raw z space:

    ẑ = codes @ dictionary + offset,   dictionary: float32[n, 512] with unit-norm rows,

so the evaluator treats all models alike and `|codes[:, j]|` is the length of atom j's contribution to
the reconstruction (which is what top-k sparsification at matched sparsity ranks by).

- PCA: offset = train mean, atoms = principal axes (already unit norm).
- FastICA: offset = train mean, atoms = columns of the mixing matrix scaled to unit norm; codes are
  the independent sources multiplied by the original column norms, so the reconstruction is unchanged.
- NMF: NMF needs non-negative input, so it is fit on the *shifted* data z − m, where m: float32[512]
  is the per-feature minimum over the training rows (every training value becomes >= 0). Rows seen
  later with values below m are clipped at 0 before encoding (the clipped fraction is logged).
  offset = m, atoms = NMF components scaled to unit norm, codes scaled by the component norms (>= 0).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from sklearn.decomposition import NMF, PCA, FastICA
from sklearn.exceptions import ConvergenceWarning

from stsae.errors import InputDataError, StsaeError
from stsae.utils import io

log = logging.getLogger(__name__)

Method = Literal["pca", "ica", "nmf"]
METHODS: tuple[Method, ...] = ("pca", "ica", "nmf")
EMBEDDING_DIM = 512
_FORMAT = "stsae-baseline-v1"


class BaselineError(StsaeError, ValueError):
    """A baseline parameter or input is invalid; the message names the parameter."""


def _check_z(z: np.ndarray, name: str = "z") -> np.ndarray:
    """Return z as float32[N, 512] (a copy only if needed), or raise naming the argument."""
    if z.ndim != 2 or z.shape[1] != EMBEDDING_DIM:
        raise BaselineError(f"{name}: expected float32[N, {EMBEDDING_DIM}], got shape {list(z.shape)}")
    return np.asarray(z, dtype=np.float32)


class Baseline:
    """A fitted (or to-be-fitted) PCA / ICA / NMF model with the ST-SAE interface.

    Parameters are validated in `fit` (scikit-learn style) so that a config error names the key.
    """

    def __init__(self, method: str, n_components: int, seed: int = 0, max_iter: int = 400):
        self.method = method
        self.n_components = n_components
        self.seed = seed
        self.max_iter = max_iter
        self.estimator: Any = None
        self.offset: np.ndarray | None = None
        self.atom_norms: np.ndarray | None = None
        self._dictionary: np.ndarray | None = None

    @property
    def name(self) -> str:
        """File stem used under models/baselines/: `<method>-n<n>`."""
        return f"{self.method}-n{self.n_components}"

    def _validate_params(self, n_rows: int) -> None:
        if self.method not in METHODS:
            raise BaselineError(
                f"baselines.methods: unknown method {self.method!r} (choose from {list(METHODS)})")
        if not isinstance(self.n_components, int) or self.n_components < 1:
            raise BaselineError(f"baselines.n_components: must be a positive int, got {self.n_components!r}")
        limit = min(n_rows, EMBEDDING_DIM)
        if self.n_components > limit:
            raise BaselineError(
                f"baselines.n_components: {self.n_components} exceeds min(train rows, 512) = {limit}"
            )
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise BaselineError(f"baselines.max_iter: must be a positive int, got {self.max_iter!r}")

    def fit(self, z: np.ndarray) -> Baseline:
        """Fit on z: float32[N, 512] (train rows). Returns self."""
        z = _check_z(z)
        self._validate_params(z.shape[0])
        if not np.isfinite(z).all():
            raise InputDataError("z: training embeddings contain NaN or inf")
        seed = self.seed % 2**32
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if self.method == "pca":
                est = PCA(n_components=self.n_components, svd_solver="full", random_state=seed).fit(z)
                offset, atoms = est.mean_, est.components_
            elif self.method == "ica":
                est = FastICA(n_components=self.n_components, whiten="unit-variance",
                              max_iter=self.max_iter, random_state=seed).fit(z)
                offset, atoms = est.mean_, est.mixing_.T
            else:
                offset = z.min(axis=0)
                est = NMF(n_components=self.n_components, init="nndsvda", max_iter=self.max_iter,
                          random_state=seed).fit(z - offset)
                atoms = est.components_
        for warning in caught:
            if issubclass(warning.category, ConvergenceWarning):
                log.warning("%s: %s (raise baselines.max_iter)", self.name, warning.message)
        norms = np.linalg.norm(atoms, axis=1)
        norms = np.where(norms > 0, norms, 1.0)
        self.estimator = est
        self.offset = np.asarray(offset, dtype=np.float32)
        self.atom_norms = norms.astype(np.float32)
        self._dictionary = (atoms / norms[:, None]).astype(np.float32)
        return self

    def _require_fitted(self) -> None:
        if self.estimator is None:
            raise BaselineError(f"{self.name}: not fitted (call fit first)")

    @property
    def dictionary(self) -> np.ndarray:
        """float32[n, 512], unit-norm rows in z space: ẑ = codes @ dictionary + offset."""
        self._require_fitted()
        assert self._dictionary is not None
        return self._dictionary

    def encode(self, z: np.ndarray) -> np.ndarray:
        """z: float32[N, 512] -> codes float32[N, n] (in units of the unit-norm atoms)."""
        self._require_fitted()
        z = _check_z(z)
        assert self.offset is not None and self.atom_norms is not None
        if self.method == "nmf":
            shifted = z - self.offset
            negative = shifted < 0
            if negative.any():
                log.debug("%s: clipped %.3g%% of values below the train minimum", self.name,
                          100 * negative.mean())
                shifted = np.maximum(shifted, 0)
            with warnings.catch_warnings():
                # transform is NNLS by coordinate descent capped at max_iter; the fit already logged
                # whether it converged, and one warning per encoded batch would flood the log.
                warnings.simplefilter("ignore", ConvergenceWarning)
                raw = self.estimator.transform(shifted)
        else:
            raw = self.estimator.transform(z)
        return (raw * self.atom_norms).astype(np.float32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes: float32[N, n] -> ẑ float32[N, 512] = codes @ dictionary + offset."""
        self._require_fitted()
        if codes.ndim != 2 or codes.shape[1] != self.n_components:
            raise BaselineError(f"codes: expected float32[N, {self.n_components}], got {list(codes.shape)}")
        assert self.offset is not None
        return (np.asarray(codes, dtype=np.float32) @ self.dictionary + self.offset).astype(np.float32)

    def save(self, path: Path | str) -> None:
        """Write the fitted model with joblib (atomically)."""
        self._require_fitted()
        payload = {"format": _FORMAT, "method": self.method, "n_components": self.n_components,
                   "seed": self.seed, "max_iter": self.max_iter, "estimator": self.estimator,
                   "offset": self.offset, "atom_norms": self.atom_norms, "dictionary": self._dictionary}
        with io.atomic_path(path) as tmp:
            joblib.dump(payload, tmp)

    @classmethod
    def load(cls, path: Path | str) -> Baseline:
        """Read a model written by `save`; raises InputDataError naming the file if it is not one."""
        path = Path(path)
        try:
            payload = joblib.load(path)
        except FileNotFoundError:
            raise InputDataError(f"{path}: missing (run `stsae baselines` first)") from None
        except Exception as exc:
            raise InputDataError(f"{path}: not a readable baseline file ({exc})") from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise InputDataError(f"{path}: not a stsae baseline (field 'format' != {_FORMAT!r})")
        model = cls(payload["method"], payload["n_components"], payload["seed"], payload["max_iter"])
        model.estimator = payload["estimator"]
        model.offset = payload["offset"]
        model.atom_norms = payload["atom_norms"]
        model._dictionary = payload["dictionary"]
        return model
