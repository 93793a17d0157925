"""Transfer evaluation: how well run A's frozen models work on cohort B, against a model refit on B.

Definitions (transfer.json, docs/CONTRACTS.md "apply"):
- age: MAE and Pearson r of UNCORRECTED predictions on B's test patients, for A's frozen age model and
  for the age pipeline refit on B's train patients (same features: B's mean activations of A's concepts,
  B's aging config). The refit is the reference: the gap is what transfer costs.
- Δage associations: odds ratios of HTN/T2D per 5 years of Δage (adjusted for age and sex) on B, with
  A's frozen model and correction (all B patients) and with the refit (B's val + test patients).
- concept shift: per concept, the fraction of windows on which it fires (activation > 0) in A and in B.
  A concept "shifts" when one rate exceeds twice the other (firing at one site only counts); the summary
  is the fraction of concepts live at either site that shift (null 0 when both sites are the same cohort).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stsae.aging.age_pred import aging_pipeline, patient_mean_codes
from stsae.aging.associations import condition_associations
from stsae.apply.cohort import AppliedCohort, SparseCodeRecorder, prediction_metrics
from stsae.apply.source import FrozenModels, SourceRun
from stsae.config import AgingSection
from stsae.data.store import load_embeddings
from stsae.errors import StsaeError

log = logging.getLogger(__name__)

SHIFT_FACTOR = 2.0
APPLIED_COLUMNS = ("age_pred", "age_pred_corrected", "delta_age")


def firing_shift(rate_a: np.ndarray, rate_b: np.ndarray, factor: float = SHIFT_FACTOR) -> dict[str, Any]:
    """Per-concept firing rates of two sites and the fraction of live concepts whose rate changes > factor×.

    rate_a, rate_b: float[K] in [0, 1]. live = fires at either site; shifted = live and
    max(rate) > factor · min(rate) (a rate of 0 at one site always shifts).
    """
    if rate_a.shape != rate_b.shape or rate_a.ndim != 1:
        raise ValueError(f"firing rates must be float[K] of one length, got {rate_a.shape} and {rate_b.shape}")
    high, low = np.maximum(rate_a, rate_b), np.minimum(rate_a, rate_b)
    live = high > 0
    shifted = live & (high > factor * low)
    return {
        "factor": factor,
        "n_concepts": len(rate_a),
        "n_live": int(live.sum()),
        "n_shifted": int(shifted.sum()),
        "fraction_shifted": float(shifted.sum() / live.sum()) if live.any() else None,
        "shifted_concepts": np.flatnonzero(shifted).tolist(),
        "rate_source": rate_a.tolist(),
        "rate_target": rate_b.tolist(),
    }


def source_firing_rates(source: SourceRun, frozen: FrozenModels) -> np.ndarray:
    """float64[K]: firing rate of each of A's concepts over A's own embedded windows."""
    embeddings = load_embeddings(source.run_dir)
    recorder = SparseCodeRecorder(frozen.concept_model.encode)
    patient_mean_codes(recorder, embeddings.z, embeddings.index["patient_id"].astype(str).to_numpy())
    return recorder.firing_rates()


def _refit(cohort: AppliedCohort, aging: AgingSection, seed: int) -> dict[str, Any]:
    """The age pipeline refit on B (train → fit, val → correction, test → metrics), or why it could not be."""
    table = cohort.patients.drop(columns=list(APPLIED_COLUMNS))
    try:
        result = aging_pipeline(cohort.x, table, aging, seed)
    except StsaeError as exc:
        log.warning("transfer: refit on the target cohort skipped: %s", exc)
        return {"skipped": str(exc)}
    test = result.predictions[result.predictions["split"] == "test"]
    return {"test": prediction_metrics(test["age"].to_numpy(np.float64), test["age_pred"].to_numpy()),
            "associations": condition_associations(result.delta, min_events=aging.min_events)}


def transfer_evaluation(source: SourceRun, frozen: FrozenModels, cohort: AppliedCohort,
                        aging: AgingSection, seed: int) -> dict[str, Any]:
    """The transfer.json payload (module docstring): frozen vs refit age model, Δage ORs, concept shift."""
    patients = cohort.patients
    test = patients[patients["split"] == "test"]
    frozen_test = prediction_metrics(test["age"].to_numpy(np.float64), test["age_pred"].to_numpy())
    refit = _refit(cohort, aging, seed)
    refit_mae = refit.get("test", {}).get("mae")
    return {
        "source_run": str(source.run_dir.root),
        "age": {
            "frozen_source_model": {"test": frozen_test, "all": prediction_metrics(
                patients["age"].to_numpy(np.float64), patients["age_pred"].to_numpy())},
            "refit_on_target": refit,
            "mae_gap_years": None if refit_mae is None or frozen_test["mae"] is None
            else frozen_test["mae"] - refit_mae,
        },
        "delta_age_associations": {"frozen_source_model": cohort.associations,
                                   "refit_on_target": refit.get("associations")},
        "concept_shift": firing_shift(source_firing_rates(source, frozen), cohort.codes.firing_rates()),
    }
