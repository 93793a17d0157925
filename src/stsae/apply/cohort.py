"""Encode cohort B with run A's frozen concept model and predict B's ages with A's frozen age model.

Nothing is refitted: B's patient features are the mean activations of A's concept model over B's
windows (the same `patient_mean_codes` the age stage uses, so applying A to A's own patients gives A's
predictions bit for bit), standardised with A's train mean and SD, through A's elastic net and A's bias
correction. Each concept's contribution to a patient's predicted age is its coefficient in years per
unit activation times the patient's mean activation measured from A's average train patient:
contribution_k = coef_k / scale_k · (x̄_k − mean_k), so intercept + Σ_k contribution_k = predicted age.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stsae.aging.age_pred import AgePredictor, patient_mean_codes, patient_table
from stsae.aging.associations import condition_associations
from stsae.apply.layout import AppliedDir
from stsae.apply.source import FrozenModels
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError
from stsae.rundir import RunDir
from stsae.utils import io

log = logging.getLogger(__name__)

ALL_SPLITS = ("train", "val", "test")
"""Every patient of B is new to A's age model, so associations on B use all of B's splits."""


class SparseCodeRecorder:
    """An encode function that also keeps what it returned, sparsely (CSR over windows).

    Why a wrapper: the patient means and the per-window codes then come from one pass over z, and the
    means are computed exactly as the age stage computes them.
    """

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray]):
        self._encode = encode
        self._indices: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self.d_dict = 0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """z: float32[B, 512] -> float32[B, K], recorded."""
        codes = np.asarray(self._encode(z), dtype=np.float32)
        self.d_dict = codes.shape[1]
        rows, cols = np.nonzero(codes)
        self._indices.append(cols.astype(np.int32))
        self._values.append(codes[rows, cols])
        self._counts.append(np.bincount(rows, minlength=codes.shape[0]))
        return codes

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr int64[M+1], concept int32[nnz], value float32[nnz]) of every row encoded so far."""
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        concept = np.concatenate(self._indices) if self._indices else np.zeros(0, np.int32)
        value = np.concatenate(self._values) if self._values else np.zeros(0, np.float32)
        return indptr, concept, value

    def firing_rates(self) -> np.ndarray:
        """float64[K]: fraction of encoded windows with a positive activation of each concept."""
        indptr, concept, value = self.csr()
        n_rows = max(len(indptr) - 1, 1)
        return np.bincount(concept[value > 0], minlength=self.d_dict) / n_rows


@dataclass(frozen=True)
class AppliedCohort:
    """A's models on B: per-patient table, contributions, sparse codes and B's associations.

    patients: patient_table rows + age_pred, age_pred_corrected, delta_age; x: float64[P, K] patient means.
    """

    patients: pd.DataFrame
    x: np.ndarray
    contributions: pd.DataFrame
    codes: SparseCodeRecorder
    window_ids: np.ndarray
    associations: dict[str, Any]


def concept_contributions(predictor: AgePredictor, x: np.ndarray, patient_ids: np.ndarray) -> pd.DataFrame:
    """Long table (patient_id, concept, contribution_years) over the predictor's selected concepts.

    x: float64[P, K]; each patient's rows sum, with the intercept, to its predicted age.
    """
    selected = predictor.selected
    years = predictor.contributions(x)[:, selected]
    return pd.DataFrame({
        "patient_id": np.repeat(np.asarray(patient_ids, dtype=str), len(selected)),
        "concept": np.tile(selected.astype(np.int32), len(patient_ids)),
        "contribution_years": years.reshape(-1),
    })


def prediction_metrics(age: np.ndarray, predicted: np.ndarray) -> dict[str, float | int | None]:
    """n, MAE and Pearson r of predictions on the patients with a known age (None when undefined)."""
    known = np.isfinite(age)
    age, predicted = age[known], predicted[known]
    if len(age) == 0:
        return {"n": 0, "mae": None, "r": None}
    r = float(np.corrcoef(age, predicted)[0, 1]) if len(age) >= 3 and age.std() > 0 and predicted.std() > 0 else None
    return {"n": len(age), "mae": float(np.abs(predicted - age).mean()), "r": r}


def apply_to_cohort(run_dir: RunDir, frozen: FrozenModels, min_events: int) -> AppliedCohort:
    """A's frozen models on B's embeddings (B's prepare and extract have run)."""
    embeddings = load_embeddings(run_dir)
    table = patient_table(io.read_parquet(run_dir.meta))
    window_patients = embeddings.index["patient_id"].astype(str).to_numpy()
    unknown = sorted(set(window_patients) - set(table["patient_id"]))
    if unknown:
        raise InputDataError(f"{run_dir.index}: patient {unknown[0]} is not in {run_dir.meta.name} (rerun prepare)")
    recorder = SparseCodeRecorder(frozen.concept_model.encode)
    ids, x = patient_mean_codes(recorder, embeddings.z, window_patients)
    predicted = frozen.predictor.predict(x)
    corrected = frozen.correction.apply(predicted)
    patients = table.set_index("patient_id").loc[ids].reset_index()
    patients = patients.assign(age_pred=predicted, age_pred_corrected=corrected,
                               delta_age=corrected - patients["age"].to_numpy(dtype=np.float64))
    known = patients[patients["age"].notna()]
    associations = condition_associations(known, min_events=min_events, splits=ALL_SPLITS)
    return AppliedCohort(patients, x, concept_contributions(frozen.predictor, x, ids), recorder,
                         embeddings.index["window_id"].to_numpy(np.int64), associations)


def write_applied(out: AppliedDir, cohort: AppliedCohort) -> dict[str, Any]:
    """Write codes.npz, predictions.parquet, contributions.parquet, firing_rates.npy and associations.json;
    returns the associations payload."""
    indptr, concept, value = cohort.codes.csr()
    out.root.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(out.codes) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, window_id=cohort.window_ids, indptr=indptr, concept=concept, value=value,
                 d_dict=np.int64(cohort.codes.d_dict))
    io.write_parquet(out.predictions, cohort.patients)
    io.write_parquet(out.contributions, cohort.contributions)
    io.save_npy(out.firing_rates, cohort.codes.firing_rates())
    age = cohort.patients["age"].to_numpy(dtype=np.float64)
    payload = {
        "association_splits": list(ALL_SPLITS),
        "metrics": prediction_metrics(age, cohort.patients["age_pred"].to_numpy()),
        "associations": cohort.associations,
    }
    io.write_json(out.associations, payload)
    return payload
