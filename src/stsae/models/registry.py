"""One numpy interface over every concept model of a run (ST-SAE checkpoints and PCA/ICA/NMF baselines).

Evaluation, aging and grounding never care which family a model is: they call
`list_models(run_dir)` and `load_concept_model(path)` and get `encode / decode / dictionary` on
numpy arrays. Metadata comes from each model's JSON sidecar (never from the file name). Baselines are
listed by the names the config asks for, never by globbing, and no model file is unpickled. ST-SAE models
are those of models/ itself: the train stage moves models of an earlier grid, config or embeddings into
models/stale/, so after it ran models/ is the current grid; a reader can also pass that grid explicitly.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stsae.config import BaselinesSection
from stsae.errors import InputDataError
from stsae.models.baselines import (
    BASELINE_FORMAT,
    EMBEDDING_DIM,
    AffineDictionary,
    load_baseline,
    read_baseline_sidecar,
    sidecar_path,
)
from stsae.rundir import RunDir
from stsae.utils.device import CPU

log = logging.getLogger(__name__)

STSAE_FAMILY = "stsae"


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a model file without running it.

    name: file stem (`stsae-full-K1024-s0`, `pca-n16`); family: stsae|pca|ica|nmf; variant: the ST-SAE
    variant (`full`, ablations) or, for baselines, the method name; d_dict: K (atoms); seed: training seed.
    """

    name: str
    family: str
    variant: str
    d_dict: int
    seed: int
    path: Path


class ConceptModel(ABC):
    """encode: float32[N, 512] -> float32[N, K]; decode: float32[N, K] -> float32[N, 512] (raw z space)."""

    def __init__(self, info: ModelInfo, batch_size: int = 4096):
        self.info = info
        self.batch_size = batch_size

    name = property(lambda self: self.info.name)
    family = property(lambda self: self.info.family)
    variant = property(lambda self: self.info.variant)
    d_dict = property(lambda self: self.info.d_dict)
    seed = property(lambda self: self.info.seed)

    @property
    @abstractmethod
    def dictionary(self) -> np.ndarray:
        """float32[K, 512] unit-norm decoder atoms in z space."""

    @abstractmethod
    def _encode_batch(self, z: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _decode_batch(self, codes: np.ndarray) -> np.ndarray: ...

    def _batched(self, x: np.ndarray, width: int, fn: Any, out_width: int, what: str) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{self.name}: {what} expects float32[N, {width}], got shape {list(x.shape)}")
        out = np.empty((x.shape[0], out_width), dtype=np.float32)
        for start in range(0, x.shape[0], self.batch_size):
            chunk = np.asarray(x[start:start + self.batch_size], dtype=np.float32)
            out[start:start + len(chunk)] = fn(chunk)
        return out

    def encode(self, z: np.ndarray) -> np.ndarray:
        """z: float32[N, 512] (memmap slices fine) -> codes float32[N, K], in batches of batch_size."""
        return self._batched(z, EMBEDDING_DIM, self._encode_batch, self.d_dict, "encode")

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes: float32[N, K] -> ẑ float32[N, 512] in raw z space."""
        return self._batched(codes, self.d_dict, self._decode_batch, EMBEDDING_DIM, "decode")


class StsaeConceptModel(ConceptModel):
    """Wraps a torch module with `encode(Tensor[B,512]) -> Tensor[B,K]`, `decode`, `W_dec: [K,512]`; the
    module runs on `device` (batches go there and come back as numpy; on the CPU nothing is copied)."""

    def __init__(self, module: torch.nn.Module, info: ModelInfo, batch_size: int = 4096,
                 device: torch.device = CPU):
        super().__init__(info, batch_size)
        self.module = module.eval().to(device)
        self.device = device
        with torch.inference_mode():
            w_dec = module.W_dec.detach().float().cpu().numpy()
        if w_dec.shape != (info.d_dict, EMBEDDING_DIM):
            raise InputDataError(f"{info.path}: W_dec has shape {list(w_dec.shape)}, expected "
                                 f"[{info.d_dict}, {EMBEDDING_DIM}] (field d_dict of the .json sidecar)")
        norms = np.linalg.norm(w_dec, axis=1, keepdims=True)
        self._dictionary = (w_dec / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    @property
    def dictionary(self) -> np.ndarray:
        return self._dictionary

    def _encode_batch(self, z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module.encode(torch.from_numpy(z).to(self.device)).float().cpu().numpy()

    def _decode_batch(self, codes: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module.decode(torch.from_numpy(codes).to(self.device)).float().cpu().numpy()


class BaselineConceptModel(ConceptModel):
    """Wraps a fitted baseline (PCA / ICA / NMF); with `k_sparse` set, encodes at most k nonzero codes
    per row on the baseline's own dictionary (`encode_k_sparse`, the matched-sparsity comparison)."""

    def __init__(self, baseline: AffineDictionary, info: ModelInfo, batch_size: int = 4096,
                 k_sparse: int | None = None):
        super().__init__(info, batch_size)
        self.baseline = baseline
        self.k_sparse = k_sparse

    @property
    def dictionary(self) -> np.ndarray:
        return self.baseline.dictionary

    def _encode_batch(self, z: np.ndarray) -> np.ndarray:
        if self.k_sparse is None:
            return self.baseline.encode(z)
        return self.baseline.encode_k_sparse(z, self.k_sparse)

    def _decode_batch(self, codes: np.ndarray) -> np.ndarray:
        return self.baseline.decode(codes)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _stsae_info(path: Path) -> ModelInfo | None:
    """ModelInfo from the checkpoint's .json sidecar, or None when the checkpoint is incomplete."""
    side = _sidecar(path)
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{side}: not valid JSON ({exc.msg})") from None
    if meta.get("complete") is not True:
        return None
    missing = [key for key in ("variant", "d_dict", "seed") if key not in meta]
    if missing:
        raise InputDataError(f"{side}: missing field(s) {missing}")
    return ModelInfo(path.stem, STSAE_FAMILY, str(meta["variant"]), int(meta["d_dict"]), int(meta["seed"]),
                     path)


def _baseline_info(path: Path) -> ModelInfo:
    """ModelInfo from a baseline's .json sidecar (the arrays are not read)."""
    meta = read_baseline_sidecar(path)
    return ModelInfo(path.stem, meta["method"], meta["method"], int(meta["n_components"]), int(meta["seed"]),
                     path)


def _configured_baselines(run_dir: RunDir, baselines: BaselinesSection) -> list[ModelInfo]:
    """The baselines the config asks for (`baselines.methods` x `baselines.n_components`), by name: no
    other file in models/baselines/ is ever opened."""
    infos = []
    for method in baselines.methods:
        for n in baselines.n_components:
            info = _baseline_info(run_dir.baseline(method, n))
            if (info.family, info.d_dict) != (method, n):
                raise InputDataError(f"{sidecar_path(info.path)}: describes {info.family} with {info.d_dict} "
                                     f"components, expected {method} with {n} (file renamed?)")
            infos.append(info)
    return infos


def list_models(run_dir: RunDir, baselines: BaselinesSection,
                grid: Collection[tuple[str, int, int]] | None = None) -> list[ModelInfo]:
    """Every complete ST-SAE checkpoint (sidecar `complete: true`), sorted by name, then the configured
    baselines (config section `baselines`).

    grid: (variant, d_dict, seed) of the ST-SAE models to list (e.g. `stsae.train.grid.build_grid(cfg)`
    entries); None lists every complete checkpoint in models/ (never models/stale/).
    """
    infos: list[ModelInfo] = []
    if run_dir.models_dir.is_dir():
        for path in sorted(run_dir.models_dir.glob("stsae-*.safetensors")):
            info = _stsae_info(path)
            if info is None:
                log.info("skipping %s: no complete .json sidecar (training unfinished?)", path.name)
            elif grid is None or (info.variant, info.d_dict, info.seed) in grid:
                infos.append(info)
    return infos + _configured_baselines(run_dir, baselines)


def _load_stsae_module(path: Path) -> torch.nn.Module:
    """Import lazily so baselines-only tools work without the ST-SAE module loaded."""
    from stsae.models.stsae import STSAE

    return STSAE.load(path)


def _is_baseline(path: Path) -> bool:
    """A baseline's sidecar names the baseline file format; an ST-SAE's does not."""
    try:
        return json.loads(_sidecar(path).read_text()).get("format") == BASELINE_FORMAT
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_concept_model(path: Path | str, batch_size: int = 4096, device: torch.device = CPU) -> ConceptModel:
    """Load an ST-SAE checkpoint or a baseline (both `.safetensors` + `.json`; nothing is unpickled).

    An ST-SAE encodes and decodes on `device`; baselines are numpy and stay on the CPU."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputDataError(f"{path}: unknown model file type (expected .safetensors with a .json sidecar)")
    if _is_baseline(path):
        return BaselineConceptModel(load_baseline(path), _baseline_info(path), batch_size)
    if not path.is_file():
        raise InputDataError(f"{path}: missing (run `stsae train` first)")
    info = _stsae_info(path)
    if info is None:
        raise InputDataError(f"{_sidecar(path)}: missing or not marked complete (training unfinished)")
    return StsaeConceptModel(_load_stsae_module(path), info, batch_size, device)


def k_sparse_view(model: ConceptModel, k: int) -> BaselineConceptModel:
    """The loaded baseline `model` encoding at most k nonzero codes per row on its own dictionary (refit,
    offset kept): the matched-sparsity comparison with an ST-SAE whose L0 is k. It shares the baseline's
    fitted arrays and the dense codes it remembers (`AffineDictionary.remember_dense_codes`)."""
    if not isinstance(model, BaselineConceptModel):
        raise InputDataError(f"{model.info.path}: k-sparse re-encoding is defined for baselines only")
    return BaselineConceptModel(model.baseline, model.info, model.batch_size, k_sparse=k)
