"""The `age` stage: concept age model, bias-corrected Δage, and HTN/T2D associations → aging/.

The concept model is the ST-SAE variant `aging.model` at the main model's K and seed
(`stsae.train.grid.main_entry`: train.d_dict and the first of train.seeds), so the model aging explains
is the one every other stage reports; the `train` upstream fingerprint reruns this stage when they change.
The same pipeline runs on the patient-mean raw embedding and on the best baseline, so the associations
can be compared with the concept predictor's. The "best baseline" is chosen once, before any elastic
net is fitted on baselines: every baseline's patient features go through a closed-form leave-one-out
ridge fitted on train patients (`ridge_val_mae`), the lowest validation MAE wins (no test data), and only
that baseline gets the full ElasticNetCV pipeline. Associations use validation and test patients
(`ASSOCIATION_SPLITS`: never seen by the age model; the correction never sees HTN/T2D).

On the synthetic cohort the same pipeline also runs on the planted truth the waveform is drawn from,
minus vascular age itself (patient means of the exact reflection time, AIx, notch depth and heart rate,
and sex): a reference for how far a linear age model can make Δage track the planted acceleration at
all, given the individual morphology deviations the simulator adds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from stsae.aging.age_pred import (
    AgingResult,
    age_model_record,
    aging_pipeline,
    patient_mean_codes,
    patient_table,
    ridge_val_mae,
)
from stsae.aging.associations import ASSOCIATION_SPLITS, CONDITIONS, condition_associations
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError, StsaeError
from stsae.models.registry import ModelInfo, list_models, load_concept_model
from stsae.pipeline.contract import StageContext, StageContract
from stsae.train.grid import main_entry
from stsae.utils import io

log = logging.getLogger(__name__)

BASELINE_FAMILIES = ("pca", "ica", "nmf")
PLANTED_MORPHOLOGY = ("reflection_time", "aix", "notch_depth", "hr_bpm")


def concept_model_info(models: list[ModelInfo], variant: str, d_dict: int, seed: int) -> ModelInfo:
    """The ST-SAE checkpoint that aging explains; a user error naming the keys when it is missing."""
    for info in models:
        if (info.family, info.variant, info.d_dict, info.seed) == ("stsae", variant, d_dict, seed):
            return info
    raise StsaeError(
        f"no trained ST-SAE '{variant}' with K={d_dict}, seed {seed} in models/ "
        "(check aging.model, train.d_dict, train.seeds; run `stsae train`)"
    )


def planted_morphology_rows(meta: pd.DataFrame, window_ids: np.ndarray) -> np.ndarray | None:
    """float64[M, 5] planted morphology, heart rate and sex (1 = female; the simulator shortens reflection
    time in women) of the embedded windows, in the row order of `window_ids`; None when meta has no
    planted morphology (real data)."""
    if not {*PLANTED_MORPHOLOGY, "sex"} <= set(meta.columns):
        return None
    rows = meta.set_index("window_id").loc[window_ids]
    female = (rows["sex"].astype(str) == "F").to_numpy(np.float64)[:, None]
    values = np.hstack([rows[list(PLANTED_MORPHOLOGY)].to_numpy(np.float64), female])
    if not np.isfinite(values).all():
        log.warning("planted morphology has non-finite values: no planted-morphology reference predictor")
        return None
    return values


Encode = Callable[[np.ndarray], np.ndarray]
PatientFeatures = Callable[[Encode], tuple[np.ndarray, pd.DataFrame]]
"""encode -> (float64[P, K] patient-mean codes, the P patient rows of patient_table)."""


class BaselineChoice(NamedTuple):
    """The baseline the ridge screen picked, its patient features and its screen validation MAE."""

    info: ModelInfo
    x: np.ndarray
    patients: pd.DataFrame
    screen_val_mae: float


def best_baseline(baselines: list[ModelInfo], features: PatientFeatures) -> BaselineChoice | None:
    """The baseline with the lowest validation MAE under the ridge screen; None when there is none."""
    screened = []
    for info in baselines:
        x, rows = features(load_concept_model(info.path).encode)
        screened.append(BaselineChoice(info, x, rows, ridge_val_mae(x, rows)))
        log.info("baseline screen %s: ridge validation MAE %.2f y", info.name, screened[-1].screen_val_mae)
    return min(screened, key=lambda choice: choice.screen_val_mae) if screened else None


def _summary(model: str, result: AgingResult) -> dict[str, Any]:
    return {"model": model, "val_mae": result.val_mae, **result.metrics}


CONTRACT = StageContract(
    name="age", help="Predict age from concepts; bias-corrected delta-age; HTN/T2D associations.",
    reads=("run.seed", "aging", "train.d_dict", "train.seeds", "baselines.methods",
           "baselines.n_components"), upstream=("train", "baselines"), out_dir="aging")


def run(ctx: StageContext) -> None:
    config, run_dir = ctx.config, ctx.run_dir
    embeddings = load_embeddings(run_dir)
    meta = io.read_parquet(run_dir.meta)
    patients = patient_table(meta)
    seed, aging = config.run.seed, config.aging
    window_patients = embeddings.index["patient_id"].astype(str).to_numpy()

    unknown = sorted(set(window_patients) - set(patients["patient_id"]))
    if unknown:
        raise InputDataError(
            f"{run_dir.index}: patient {unknown[0]} is not in {run_dir.meta.name} (rerun prepare)"
        )

    def features(encode: Encode, z: np.ndarray = embeddings.z) -> tuple[np.ndarray, pd.DataFrame]:
        ids, means = patient_mean_codes(encode, z, window_patients)
        return means, patients.set_index("patient_id").loc[ids].reset_index()

    def fit(encode: Encode, z: np.ndarray = embeddings.z) -> AgingResult:
        return aging_pipeline(*features(encode, z), aging, seed)

    models = list_models(run_dir, config.baselines)
    main = main_entry(config.train)
    info = concept_model_info(models, aging.model, main.d_dict, main.seed)
    concept = fit(load_concept_model(info.path).encode)
    raw = fit(np.asarray)

    def associate(result: AgingResult) -> dict[str, Any]:
        return condition_associations(result.delta, min_events=aging.min_events)

    associations: dict[str, Any] = {"concepts": associate(concept), "raw_embedding": associate(raw)}
    predictors = {"concepts": _summary(info.name, concept), "raw_embedding": _summary("raw_embedding", raw)}
    best = best_baseline([b for b in models if b.family in BASELINE_FAMILIES], features)
    if best is not None:
        result = aging_pipeline(best.x, best.patients, aging, seed)
        associations["best_baseline"] = associate(result)
        predictors["best_baseline"] = {
            **_summary(best.info.name, result), "screen_ridge_val_mae": best.screen_val_mae
        }
    else:
        associations["best_baseline"] = {
            c: {"skipped": "no baseline models in models/baselines"} for c in CONDITIONS
        }
    planted = planted_morphology_rows(meta, embeddings.index["window_id"].to_numpy())
    if planted is not None:  # five known features: no selection among them, a plain elastic net
        reference = aging_pipeline(*features(np.asarray, planted),
                                   aging.model_copy(update={"stability_selection": False}), seed)
        predictors["planted_morphology"] = _summary("planted_morphology", reference)
    io.write_parquet(run_dir.predictions, concept.predictions)
    io.write_parquet(run_dir.delta_age, concept.delta)
    io.write_json(run_dir.age_model, age_model_record(info.name, concept.predictor))
    correction = concept.correction
    io.write_json(
        run_dir.associations,
        {
            "metrics": concept.metrics,
            "bias_correction": {
                "fitted_on": correction.fitted_on,
                "slope": correction.slope,
                "intercept": correction.intercept,
            },
            "associations": associations,
            "association_splits": list(ASSOCIATION_SPLITS),
            "predictors": predictors,
        },
    )
    log.info(
        "age model %s: test MAE %.2f y, r %.3f; corr(Δage, age) after correction %s",
        info.name,
        concept.metrics["mae"],
        concept.metrics["r"] or float("nan"),
        "n/a" if concept.metrics["delta_age_age_r"] is None else f"{concept.metrics['delta_age_age_r']:.3f}",
    )
    ctx.record("aging", {"model": info.name, "test_mae": concept.metrics["mae"]})
