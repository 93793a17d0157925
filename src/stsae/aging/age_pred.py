"""Vascular age from concepts: patient-level elastic net, a frozen age-bias correction, and Δage.

Why patient level: age is a property of the patient, and averaging concept activations over a patient's
windows removes beat-to-beat noise while keeping one row per person, so cross-validation folds and the
train/val/test split can never leak a patient. The bias correction removes the regression-to-the-mean
that every age regressor shows (young predicted too old, old too young); it is fitted on validation
predictions (or out-of-fold train predictions), frozen, and only then applied to test, so Δage on test
is never shaped by test ages.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNetCV, RidgeCV
from sklearn.model_selection import GroupKFold

from stsae.aging.stability_selection import StabilityResult, stability_selection
from stsae.config import AgingSection
from stsae.data.dataset import row_gatherer
from stsae.errors import InputDataError, StsaeError
from stsae.utils.seeding import derive_seed, rng

log = logging.getLogger(__name__)

PATIENT_COLUMNS = ("patient_id", "split", "age", "sex", "htn", "t2d")
PLANTED_COLUMN = "vascular_acceleration"
GRAM_MAX_FEATURES = 1024
"""Elastic nets on at most this many features run on the Gram matrix (≤ 8 MB per CV path); above, the
Gram's N·K² cost and memory outgrow what it saves, and scikit-learn's own choice stands."""
MIN_BIAS_SLOPE = 0.05
"""A predicted-vs-age slope below this means the predictor does not track age; inverting it is meaningless."""


@dataclass(frozen=True)
class AgePredictor:
    """A fitted linear age model on standardised patient features.

    mean, scale: float64[K] standardisation; low, high: float64[K] the range of each feature over the
    train patients; coef: float64[K] in standardised units (years per SD of a feature, so |coef| ranks
    concepts); selected: int64[S] features with a nonzero coefficient; stability: the stability-selection
    result the features were restricted to (None when not run).

    Features are clipped to their train range before the linear model sees them. A concept that fires on
    few train patients has a tiny SD, so a new patient on whom it fires strongly sits tens of SDs out and
    the linear model extrapolates without bound, to impossible ages, and one such validation patient
    bends the validation bias correction (README "Measured"). Clipping keeps every prediction inside
    what the train patients support and leaves train predictions unchanged.
    """

    mean: np.ndarray
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float
    l1_ratio: float
    selected: np.ndarray
    stability: StabilityResult | None = None

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """x: float[P, K] patient features -> float64[P, K] years each feature adds to the predicted age
        (they sum, with the intercept, to `predict(x)`)."""
        if x.ndim != 2 or x.shape[1] != self.coef.shape[0]:
            raise ValueError(f"expected features [P, {self.coef.shape[0]}], got {list(x.shape)}")
        return (np.clip(x, self.low, self.high) - self.mean) / self.scale * self.coef

    def predict(self, x: np.ndarray) -> np.ndarray:
        """x: float[P, K] patient features -> float64[P] predicted age."""
        return self.contributions(x).sum(axis=1) + self.intercept


@dataclass(frozen=True)
class BiasCorrection:
    """predicted ≈ intercept + slope · age, fitted on `fitted_on` rows only; corrected inverts that line."""

    slope: float
    intercept: float
    fitted_on: str

    def apply(self, predicted: np.ndarray) -> np.ndarray:
        return (predicted - self.intercept) / self.slope


@dataclass(frozen=True)
class AgingResult:
    """Everything one predictor yields.

    predictions: val + test patients (PATIENT_COLUMNS + age_pred, age_pred_corrected); delta: the same
    patients with delta_age (+ vascular_acceleration on the synthetic cohort); metrics: test-split numbers;
    correction_patient_ids: the patients the bias correction was fitted on (never a test patient).
    """

    predictor: AgePredictor
    correction: BiasCorrection
    predictions: pd.DataFrame
    delta: pd.DataFrame
    metrics: dict[str, float | None]
    val_mae: float
    correction_patient_ids: np.ndarray


def patient_table(meta: pd.DataFrame) -> pd.DataFrame:
    """One row per patient (sorted by patient_id) from per-window meta.parquet rows.

    Patient-level fields must be constant across a patient's windows; a patient split across train/val/test
    would leak, so it is an input error.
    """
    missing = [c for c in PATIENT_COLUMNS if c not in meta.columns]
    if missing:
        raise InputDataError(f"meta.parquet: missing column(s) {missing}")
    columns = [*PATIENT_COLUMNS, *([PLANTED_COLUMN] if PLANTED_COLUMN in meta.columns else [])]
    frame = meta[columns].copy()
    frame["patient_id"] = frame["patient_id"].astype(str)
    n_splits = frame.groupby("patient_id")["split"].nunique()
    if (n_splits > 1).any():
        raise InputDataError(
            f"meta.parquet: patient {n_splits.index[n_splits > 1][0]} appears in several splits"
        )
    return frame.groupby("patient_id", sort=True).first().reset_index()


def patient_mean_codes(
    encode: Callable[[np.ndarray], np.ndarray],
    z: np.ndarray,
    patient_ids: np.ndarray,
    batch_rows: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean code per patient, streaming over z so a memmap is never loaded whole.

    encode: float32[B, 512] -> float[B, K]; z: float32[M, 512]; patient_ids: [M].
    Returns (ids: str[P] sorted, means: float64[P, K]).

    Memory: the [P, K] sums plus one batch. Each batch adds only into the rows of its own patients (a
    dense [P, K] block per batch cost 3 × 0.5 GiB and P·K work per batch at 1M windows, K = 4096), and z
    is read with positioned reads (`row_gatherer`), so its pages do not stay in this process.
    """
    if z.ndim != 2 or len(patient_ids) != z.shape[0]:
        raise ValueError(f"z {list(z.shape)} and patient_ids ({len(patient_ids)}) must share rows")
    if z.shape[0] == 0:
        raise ValueError("patient_mean_codes: z has no rows")
    inverse, ids = pd.factorize(np.asarray(patient_ids).astype(str), sort=True)
    gather = row_gatherer(z)
    sums: np.ndarray | None = None
    for start in range(0, z.shape[0], batch_rows):
        stop = min(start + batch_rows, z.shape[0])
        codes = np.asarray(encode(np.asarray(gather(np.arange(start, stop)), dtype=np.float32)), dtype=np.float64)
        if codes.ndim != 2 or codes.shape[0] != stop - start:
            raise ValueError(f"encode returned {list(codes.shape)} for {stop - start} rows")
        present, local = np.unique(inverse[start:stop], return_inverse=True)
        one_hot = sp.csr_matrix((np.ones(stop - start), (local, np.arange(stop - start))),
                                shape=(len(present), stop - start))
        if sums is None:
            sums = np.zeros((len(ids), codes.shape[1]))
        sums[present] += one_hot @ codes
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    return np.asarray(ids, dtype=str), sums / counts[:, None]


def _group_folds(n_splits: int, seed: int) -> GroupKFold:
    return GroupKFold(
        n_splits=n_splits, shuffle=True, random_state=derive_seed(seed, "aging", "folds") % 2**31
    )


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and SD; constant columns (dead concepts) get SD 1 so they standardise to 0, not NaN."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _cv_threads() -> int:
    """Threads for the cross-validation paths: the usable cores, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


CV_PATHS_MEMORY_BYTES = 2**30
"""What the concurrently running ElasticNetCV paths may hold together: each path copies its fold's rows
(twice while scikit-learn reorders them to Fortran order) and holds a features x features Gram matrix, so at
1M windows (11,667 train patients x 4,096 concepts) one path holds ~0.8 GB and two threads took the age stage
to a 3.99 GiB anonymous peak."""


def _cv_jobs(n_rows: int, n_features: int, n_folds: int) -> int:
    """Threads for the (l1_ratio, fold) paths: the usable cores, fewer where their copies would exceed
    CV_PATHS_MEMORY_BYTES. The paths are independent, so the fit does not depend on this number."""
    fold_train = n_rows - n_rows // n_folds
    per_path = 8 * (n_features * (2 * fold_train + (n_rows - fold_train)) + n_features**2)
    return max(1, min(_cv_threads(), CV_PATHS_MEMORY_BYTES // per_path))


def _elastic_net_cv(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, config: AgingSection, seed: int
) -> ElasticNetCV:
    """ElasticNetCV over GroupKFold folds.

    The (l1_ratio, fold) paths run on threads: scikit-learn's coordinate descent releases the GIL, and the
    paths are independent, so the fitted model is identical to a serial fit. This is what the age stage
    spends its time on: on the demo, the 512 collinear raw-embedding features took 16-18 s of CPU against
    0.4 s for the 128 concepts (coordinate descent runs up to thousands of epochs at the small alphas).
    Up to GRAM_MAX_FEATURES features the descent runs on the Gram matrix (scikit-learn's "auto" does so
    only for more rows than features): a coordinate that stays at zero then costs O(1) instead of a pass
    over the rows. Same algorithm and stopping rule; on the demo's raw embeddings (195 train patients ×
    512) it took 6.2 s of CPU, chose the same alpha, l1_ratio and support, coefficients within 5e-12.
    """
    folds = list(_group_folds(config.cv_folds, seed).split(x, y, groups))
    model = ElasticNetCV(l1_ratio=config.l1_ratios, alphas=config.n_alphas, cv=folds, max_iter=5000,
                         n_jobs=_cv_jobs(*x.shape, config.cv_folds),
                         precompute=True if x.shape[1] <= GRAM_MAX_FEATURES else "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


def fit_age_predictor(
    x: np.ndarray, age: np.ndarray, groups: np.ndarray, config: AgingSection, seed: int
) -> AgePredictor:
    """ElasticNetCV (GroupKFold over patients) on standardised train features; optional stability selection.

    x: float64[P, K] patient features of the train split; age: float64[P]; groups: [P] patient ids.
    With `aging.stability_selection`, randomised-lasso stability selection (PFER-bounded, see
    stability_selection.py) picks the features and ElasticNetCV is refit on them alone.
    """
    n_groups = len(np.unique(groups))
    if n_groups < config.cv_folds:
        raise StsaeError(
            f"aging.cv_folds={config.cv_folds} exceeds the {n_groups} train patients with a known age"
        )
    mean, scale = _standardise(x)
    xs = x - mean
    xs /= scale
    model = _elastic_net_cv(xs, age, groups, config, seed)
    coef = np.asarray(model.coef_, dtype=np.float64)
    intercept, alpha, l1_ratio = float(model.intercept_), float(model.alpha_), float(model.l1_ratio_)
    stable = None
    if config.stability_selection:
        stable = stability_selection(
            xs,
            age,
            groups,
            pi_thr=config.stability_threshold,
            pfer=config.stability_pfer,
            weakness=config.stability_weakness,
            rounds=config.stability_rounds,
            n_lambdas=config.n_alphas,
            rng=rng(seed, "aging", "stability"),
        )
        log.info(
            "stability selection kept %d of %d features (q %.1f, E[false selections] <= %.2f)",
            len(stable.selected), x.shape[1], stable.q, stable.pfer_bound,
        )
        if len(stable.selected) == 0:
            raise StsaeError(
                f"stability selection kept none of {x.shape[1]} features (max selection probability "
                f"{stable.frequency.max():.2f} < aging.stability_threshold {stable.pi_thr}; q {stable.q:.1f} of "
                f"{stable.q_max} allowed): raise aging.stability_pfer, lower aging.stability_threshold, "
                "or set aging.stability_selection false"
            )
        coef = np.zeros(x.shape[1])
        refit = _elastic_net_cv(xs[:, stable.selected], age, groups, config, seed)
        coef[stable.selected] = refit.coef_
        intercept, alpha, l1_ratio = float(refit.intercept_), float(refit.alpha_), float(refit.l1_ratio_)
    return AgePredictor(
        mean=mean,
        scale=scale,
        low=x.min(axis=0),
        high=x.max(axis=0),
        coef=coef,
        intercept=intercept,
        alpha=alpha,
        l1_ratio=l1_ratio,
        selected=np.flatnonzero(coef),
        stability=stable,
    )


def out_of_fold_predictions(
    x: np.ndarray, age: np.ndarray, groups: np.ndarray, config: AgingSection, seed: int
) -> np.ndarray:
    """float64[P] train predictions, each from a model fitted without that patient (nested CV).

    Each outer GroupKFold fold reruns the whole `fit_age_predictor` procedure - the ElasticNetCV search
    over (alpha, l1_ratio) with its own inner folds, and stability selection when enabled - on the other
    folds' patients, so no choice has seen the held-out patient (tested by changing its age).
    It still gives a steeper predicted-vs-age slope than validation and over-corrects test, as a single
    refit does (README "Measured"): train patients' windows trained the ST-SAE, so their concepts are
    in-sample. Hence the default is validation.
    """
    oof = np.empty(len(age))
    for fold, (fit_rows, held_rows) in enumerate(_group_folds(config.cv_folds, seed).split(x, age, groups)):
        predictor = fit_age_predictor(x[fit_rows], age[fit_rows], groups[fit_rows], config,
                                      derive_seed(seed, "aging", "oof", fold))
        oof[held_rows] = predictor.predict(x[held_rows])
    return oof


def fit_bias_correction(predicted: np.ndarray, age: np.ndarray, fitted_on: str) -> BiasCorrection:
    """Least-squares line predicted = intercept + slope · age (Cole et al. 2018 / Smith et al. 2019 style)."""
    if len(age) < 3:
        raise StsaeError(
            f"age-bias correction needs at least 3 {fitted_on} patients with a known age, got {len(age)}"
        )
    slope, intercept = np.polyfit(age, predicted, deg=1)
    if not slope > MIN_BIAS_SLOPE:
        raise StsaeError(
            f"age-bias correction on {fitted_on}: predicted-vs-age slope {slope:.3f} <= {MIN_BIAS_SLOPE}; "
            "the age model does not track age (check aging.model, or set aging.bias_correction_on)"
        )
    return BiasCorrection(slope=float(slope), intercept=float(intercept), fitted_on=fitted_on)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def partial_correlation(a: np.ndarray, b: np.ndarray, control: np.ndarray) -> float | None:
    """Pearson r of a and b after regressing `control` (with an intercept) out of both; float[P] each.

    Why for Δage vs planted acceleration: the bias correction forces corr(Δage, age) = 0 while the planted
    acceleration correlates with age (r ≈ 0.5 in the synthetic cohort), so the raw r is capped at
    sqrt(1 − r(acceleration, age)²) even for a perfect Δage; given age, a perfect Δage scores 1.
    """
    if len(a) < 4:
        return None
    design = np.column_stack([np.ones(len(control)), control])
    residuals = [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in (a, b)]
    return _pearson(*residuals)


def _test_metrics(
    age: np.ndarray, predicted: np.ndarray, delta: np.ndarray, planted: np.ndarray | None
) -> dict:
    residual = predicted - age
    ss_tot = float(((age - age.mean()) ** 2).sum())
    return {
        "mae": float(np.abs(residual).mean()),
        "r": _pearson(predicted, age),
        "r2": 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else None,
        "delta_age_age_r": _pearson(delta, age),
        "delta_age_planted_raw_r": None if planted is None else _pearson(delta, planted),
        "delta_age_planted_partial_r": None if planted is None else partial_correlation(delta, planted, age),
    }


def aging_pipeline(x: np.ndarray, patients: pd.DataFrame, config: AgingSection, seed: int) -> AgingResult:
    """Fit on train, predict val + test, correct the age bias without touching test, and score test.

    x: float64[P, K] patient features, row p ↔ patients.iloc[p] (from `patient_table`). Patients with an
    unknown age are dropped. MAE, r and R² are on UNCORRECTED test predictions (the correction uses age,
    so corrected predictions would flatter the model); delta_age_age_r (≈ 0 when the correction works),
    delta_age_planted_raw_r and delta_age_planted_partial_r (given age) use corrected Δage on test.
    """
    if x.ndim != 2 or x.shape[0] != len(patients):
        raise ValueError(f"x {list(x.shape)} must have one row per patient ({len(patients)})")
    known = patients["age"].notna().to_numpy()
    if not known.all():  # only then: a boolean index copies x (0.5 GB at 1M windows x 4,096 concepts)
        log.warning("aging: %d patients without an age are left out", int((~known).sum()))
        x = x[known]
    patients = patients[known].reset_index(drop=True)
    split = patients["split"].to_numpy()
    age = patients["age"].to_numpy(dtype=np.float64)
    ids = patients["patient_id"].to_numpy()
    train, val, test = (split == "train"), (split == "val"), (split == "test")
    if test.sum() < 3:
        raise StsaeError(
            f"aging: test split has {int(test.sum())} patients with a known age; need at least 3"
        )
    predictor = fit_age_predictor(x[train], age[train], ids[train], config, seed)
    predicted = predictor.predict(x)
    if config.bias_correction_on == "validation":
        fit_rows = np.flatnonzero(val)
        fit_pred = predicted[fit_rows]
    else:
        fit_rows = np.flatnonzero(train)
        fit_pred = out_of_fold_predictions(x[train], age[train], ids[train], config, seed)
    correction = fit_bias_correction(fit_pred, age[fit_rows], config.bias_correction_on)
    corrected = correction.apply(predicted)
    keep = val | test
    base = patients.loc[keep, [c for c in patients.columns if c in PATIENT_COLUMNS]].reset_index(drop=True)
    predictions = base.assign(age_pred=predicted[keep], age_pred_corrected=corrected[keep])
    delta = base.assign(delta_age=corrected[keep] - age[keep])
    planted = None
    if PLANTED_COLUMN in patients.columns:
        delta[PLANTED_COLUMN] = patients.loc[keep, PLANTED_COLUMN].to_numpy(dtype=np.float64)
        planted = patients.loc[test, PLANTED_COLUMN].to_numpy(dtype=np.float64)
    metrics = _test_metrics(age[test], predicted[test], corrected[test] - age[test], planted)
    val_mae = float(np.abs(predicted[val] - age[val]).mean()) if val.any() else float("nan")
    return AgingResult(
        predictor=predictor,
        correction=correction,
        predictions=predictions,
        delta=delta,
        metrics=metrics,
        val_mae=val_mae,
        correction_patient_ids=ids[fit_rows],
    )


RIDGE_ALPHAS = np.logspace(-3, 4, 15)
"""Ridge penalties searched by leave-one-patient-out (rows are patients) in the baseline screen."""


def ridge_val_mae(x: np.ndarray, patients: pd.DataFrame) -> float:
    """Validation MAE of a RidgeCV fit on standardised train-patient features: a cheap screen.

    Why: choosing the "best baseline" by running the full ElasticNetCV pipeline on every baseline costs a
    grid search per baseline; a closed-form leave-one-out ridge ranks the feature sets on validation
    patients alone (never test) for a fraction of that, and only the winner gets the full pipeline.
    x: float64[P, K] patient features, row p ↔ patients.iloc[p] (patient_table columns).
    """
    known = patients["age"].notna().to_numpy()
    split = patients["split"].to_numpy()
    train, val = known & (split == "train"), known & (split == "val")
    if train.sum() < 3 or not val.any():
        raise StsaeError(
            f"baseline screen needs at least 3 train and 1 validation patient with a known age "
            f"(got {int(train.sum())} and {int(val.sum())})"
        )
    age = patients["age"].to_numpy(dtype=np.float64)
    mean, scale = _standardise(x[train])
    model = RidgeCV(alphas=RIDGE_ALPHAS).fit((x[train] - mean) / scale, age[train])
    return float(np.abs(model.predict((x[val] - mean) / scale) - age[val]).mean())


def age_model_record(model_name: str, predictor: AgePredictor) -> dict[str, Any]:
    """The age_model.json payload (docs/CONTRACTS.md): coef in standardised units, one per concept, with
    the standardisation (`mean`, `scale`) so the frozen model can be applied to a new cohort."""
    return {
        "model": model_name,
        "coef": predictor.coef.tolist(),
        "mean": predictor.mean.tolist(),
        "scale": predictor.scale.tolist(),
        "low": predictor.low.tolist(),
        "high": predictor.high.tolist(),
        "intercept": predictor.intercept,
        "alpha": predictor.alpha,
        "l1_ratio": predictor.l1_ratio,
        "selected": predictor.selected.tolist(),
        "stability": None if predictor.stability is None else predictor.stability.record(),
    }


def age_predictor_from_record(record: dict[str, Any], source: str) -> AgePredictor:
    """The frozen AgePredictor of an age_model.json payload (inverse of `age_model_record`).

    JSON floats round-trip exactly, so predictions equal the age stage's own. Records written before
    `mean`/`scale`/`low`/`high` were saved cannot be applied: a StsaeError naming `source` says to rerun the age stage.
    The stability-selection details are not needed to predict and are not rebuilt.
    """
    arrays = ("coef", "mean", "scale", "low", "high")
    missing = [key for key in (*arrays, "intercept") if key not in record]
    if missing:
        raise StsaeError(f"{source}: no {missing} (written by an older stsae); rerun `stsae age --force` there")
    coef, mean, scale, low, high = (np.asarray(record[key], dtype=np.float64) for key in arrays)
    if {a.ndim for a in (coef, mean, scale, low, high)} != {1} or len({len(coef), len(mean), len(scale),
                                                                        len(low), len(high)}) != 1:
        raise StsaeError(f"{source}: {', '.join(arrays)} must be lists of one length")
    return AgePredictor(mean=mean, scale=scale, low=low, high=high, coef=coef, intercept=float(record["intercept"]),
                        alpha=float(record.get("alpha", float("nan"))),
                        l1_ratio=float(record.get("l1_ratio", float("nan"))), selected=np.flatnonzero(coef))
