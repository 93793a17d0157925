"""The `age` stage: concept age model, bias-corrected Δage, and HTN/T2D associations → aging/.

The concept model is the ST-SAE variant `aging.model` at `train.d_dict` and the first of `train.seeds`;
reading those two train keys couples this stage to the train section on purpose (the model it explains
is the one training made), and the `train` upstream fingerprint already reruns this stage when they
change. The same pipeline runs on the patient-mean raw embedding and on every baseline, so the
associations can be compared with the concept predictor's; the "best baseline" is the one with the
lowest UNCORRECTED validation MAE (chosen without test data). Associations use validation and test
patients (`ASSOCIATION_SPLITS`: never seen by the age model; the correction never sees HTN/T2D).

On the synthetic cohort the same pipeline also runs on the planted truth the waveform is drawn from,
minus vascular age itself (patient means of the exact reflection time, AIx, notch depth and heart rate,
and sex): a reference for how far a linear age model can make Δage track the planted acceleration at
all, given the individual morphology deviations the simulator adds.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from stsae.aging.age_pred import (
    AgingResult,
    age_model_record,
    aging_pipeline,
    patient_mean_codes,
    patient_table,
)
from stsae.aging.associations import ASSOCIATION_SPLITS, CONDITIONS, condition_associations
from stsae.data.store import load_embeddings
from stsae.errors import InputDataError, StsaeError
from stsae.models.registry import ModelInfo, list_models, load_concept_model
from stsae.pipeline.contract import StageContext, StageContract
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


def _summary(model: str, result: AgingResult) -> dict[str, Any]:
    return {"model": model, "val_mae": result.val_mae, **result.metrics}


CONTRACT = StageContract(
    name="age", help="Predict age from concepts; bias-corrected delta-age; HTN/T2D associations.",
    reads=("run.seed", "aging", "train.d_dict", "train.seeds"), upstream=("train", "baselines"), out_dir="aging")


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

    def fit(encode: Any, z: np.ndarray = embeddings.z) -> AgingResult:
        ids, features = patient_mean_codes(encode, z, window_patients)
        rows = patients.set_index("patient_id").loc[ids].reset_index()
        return aging_pipeline(features, rows, aging, seed)

    models = list_models(run_dir)
    info = concept_model_info(models, aging.model, config.train.d_dict, config.train.seeds[0])
    concept = fit(load_concept_model(info.path).encode)
    raw = fit(np.asarray)
    baselines = {
        b.name: fit(load_concept_model(b.path).encode) for b in models if b.family in BASELINE_FAMILIES
    }

    def associate(result: AgingResult) -> dict[str, Any]:
        return condition_associations(result.delta, min_events=aging.min_events)

    associations: dict[str, Any] = {"concepts": associate(concept), "raw_embedding": associate(raw)}
    predictors = {"concepts": _summary(info.name, concept), "raw_embedding": _summary("raw_embedding", raw)}
    if baselines:
        best = min(baselines, key=lambda name: baselines[name].val_mae)
        associations["best_baseline"] = associate(baselines[best])
        predictors["best_baseline"] = _summary(best, baselines[best])
    else:
        associations["best_baseline"] = {
            c: {"skipped": "no baseline models in models/baselines"} for c in CONDITIONS
        }
    planted = planted_morphology_rows(meta, embeddings.index["window_id"].to_numpy())
    if planted is not None:
        predictors["planted_morphology"] = _summary("planted_morphology", fit(np.asarray, planted))
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
        concept.metrics["delta_age_age_r"],
    )
    ctx.record("aging", {"model": info.name, "test_mae": concept.metrics["mae"]})
