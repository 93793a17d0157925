"""Patient-grouped linear probes: how much of each label / planted factor is linearly decodable?

A probe measures what a representation carries, not how a model generalises, so it is fit on whole
patients from every split (the evaluate stage subsamples them; the ST-SAE never saw val/test windows
anyway, and a dense baseline is a linear map of z, so no probe label reaches the representation).

Protocol (the same for concepts, baselines and the raw 512-d embeddings, whose score is the reference
`raw_value` on the leaderboard):
- Outer CV: `GroupKFold` on patient_id (`grouped_folds`; a probe is never tested on a patient it was
  trained on, and the folds are checked). Out-of-fold predictions are pooled and scored once:
  continuous factors by R², binary labels by AUROC.
- Model: ridge regression on features centred on the outer training fold, with an unpenalised
  intercept. Features are not standardised: every representation is in z units (unit-norm atoms, or
  z itself), and standardising a sparse code inflates a concept seen on one training window to
  ~√n, so its coefficient fits that one window and a test window using the concept gets a wild
  prediction (a strongly negative R²). Binary labels are regressed as 0/1 (the least-squares linear
  discriminant): AUROC depends only on the ranking of the scores, and one closed-form machinery lets
  every factor share the same grouped penalty choice, in place of a logistic model with a fixed C.
- Penalty: chosen per factor and per outer fold by leave-one-patient-out CV inside the outer training
  fold (squared error, pooled over patients), never by window-level leave-one-out, which leaks across
  the windows of one patient and picks far too little regularisation. The grid is relative:
  alpha = λ · mean eigenvalue of the centred Gram matrix xᵀx, λ in `RIDGE_PENALTIES`.
- Speed: one eigendecomposition XᵀX = V diag(e) Vᵀ per outer fold gives the fit for every penalty and
  every factor at once (coefficients V diag(1/(e + alpha)) Vᵀ Xᵀy); the leave-one-patient-out
  residuals follow exactly from the full fit, e_g = (I − H_gg)⁻¹ r_g with H the ridge hat matrix
  (intercept included) restricted to patient g's rows, so no inner refit is needed. Columns constant
  on the probe rows (dead concepts) are dropped first.

Single-concept recovery: for each factor, the concept whose activation has the largest |Pearson r|
with it (constant concepts have no r and are skipped).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold

log = logging.getLogger(__name__)

CONTINUOUS_FACTORS = ("age", "vascular_age", "hr_bpm", "resp_rate", "reflection_time", "aix", "notch_depth")
BINARY_FACTORS = ("htn", "t2d", "sex")
RIDGE_PENALTIES = tuple(np.logspace(-6, 3, 19))
# A probe needs two patients to train and one to test in every outer fold, and two in the training
# fold for the inner leave-one-patient-out choice of the penalty.
MIN_PATIENTS = 3


@dataclass
class ProbeScore:
    """metric: "r2" | "auroc"; value None when skipped, with the reason."""

    metric: str
    value: float | None
    reason: str | None = None


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """GroupKFold splits (train_idx, test_idx) with at most n_folds folds; no group is on both sides.

    Raises ValueError with fewer than two groups. The disjointness is asserted, not assumed.
    """
    unique = np.unique(groups)
    if len(unique) < 2:
        raise ValueError(f"grouped cross-validation needs >= 2 patients, got {len(unique)}")
    splitter = GroupKFold(n_splits=min(n_folds, len(unique)))
    folds = list(splitter.split(np.zeros(len(groups)), groups=groups))
    for train_idx, test_idx in folds:
        if np.intersect1d(groups[train_idx], groups[test_idx]).size:
            raise AssertionError("a patient appears in both the training and test side of a probe fold")
    return folds


def binary_labels(values: pd.Series) -> np.ndarray:
    """float[N] 0/1/NaN: sex "F" -> 1, "M" -> 0; numeric 0/1 kept; anything else NaN."""
    if values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype | pd.StringDtype):
        mapped = values.map({"F": 1.0, "M": 0.0, 0: 0.0, 1: 1.0})
        return mapped.to_numpy(dtype=float)
    out = values.to_numpy(dtype=float)
    return np.where(np.isin(out, (0.0, 1.0)), out, np.nan)


class RidgePath:
    """Ridge fits of y float[n, T] on the n training rows of x for every penalty in `penalties` at once.

    x: float64[n, P] ndarray or scipy sparse matrix (mostly-zero codes); gram: float64[P, P] = xᵀx of
    those same rows, uncentred (the caller builds it from per-fold pieces). Features are centred on
    these rows, not standardised (see the module docstring); the intercept is the unpenalised mean of y.
    """

    def __init__(self, x: np.ndarray | sparse.csr_matrix, gram: np.ndarray, y: np.ndarray,
                 penalties: tuple[float, ...] = RIDGE_PENALTIES):
        n = x.shape[0]
        if y.ndim != 2 or len(y) != n or gram.shape != (x.shape[1], x.shape[1]):
            raise ValueError(f"x [n, P], gram [P, P] and y [n, T] disagree: {list(x.shape)}, "
                             f"{list(gram.shape)}, {list(y.shape)}")
        self.mean = np.asarray(x.sum(axis=0)).ravel() / n
        eig, self.vecs = np.linalg.eigh(gram - n * np.outer(self.mean, self.mean))
        eig = np.clip(eig, 0.0, None)
        mean_eig = max(eig.sum() / len(eig), np.finfo(float).tiny)
        self.alphas = np.asarray(penalties) * mean_eig  # float64[A] absolute ridge penalties
        self.weights = 1.0 / (eig[None, :] + self.alphas[:, None])  # [A, P]
        self.offset = self.mean @ self.vecs  # centred rows @ vecs = x @ vecs − offset
        self.rotated = self._rotate(x)  # [n, P] training rows in the eigenbasis
        self.y_mean = y.mean(axis=0)
        self.y_centred = y - self.y_mean
        self.rotated_xty = self.rotated.T @ self.y_centred  # [P, T]

    def _rotate(self, x: np.ndarray | sparse.csr_matrix) -> np.ndarray:
        return np.asarray(x @ self.vecs) - self.offset

    def logo_squared_error(self, groups: np.ndarray) -> np.ndarray:
        """float64[A, T]: Σ over training rows of the squared leave-one-group-out error, per penalty.

        Exact for ridge with intercept: the residuals of group g refit without g are
        (I − H_gg)⁻¹ r_g, H_gg = 1/n + U_g diag(w) U_gᵀ (U: rotated rows, w: eigen weights)."""
        n = len(self.rotated)
        fitted = self.rotated @ (self.weights[:, :, None] * self.rotated_xty[None])  # [A, n, T]
        residual = self.y_centred[None] - fitted
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        total = np.zeros((len(self.weights), self.y_centred.shape[1]))
        for rows in np.split(order, bounds):
            u = self.rotated[rows]
            m = len(rows)
            hat = ((self.weights[:, None, :] * u[None]).reshape(-1, u.shape[1]) @ u.T).reshape(-1, m, m)
            hat += 1.0 / n  # [A, m, m]
            errors = np.linalg.solve(np.eye(m)[None] - hat, residual[:, rows, :])
            total += (errors**2).sum(axis=1)
        return total

    def predict(self, x: np.ndarray | sparse.csr_matrix, penalty_idx: np.ndarray) -> np.ndarray:
        """float64[m, T] predictions for rows x [m, P], target t using penalty index penalty_idx[t]."""
        coef = self.weights[penalty_idx].T * self.rotated_xty  # [P, T]
        return self._rotate(x) @ coef + self.y_mean

    def coefficients(self, penalty_idx: np.ndarray) -> np.ndarray:
        """float64[P, T] slopes on the original (uncentred) feature columns."""
        return self.vecs @ (self.weights[penalty_idx].T * self.rotated_xty)


# Codes with at most this fraction of non-zeros (top-k sparse codes) are handled as sparse matrices.
SPARSE_DENSITY = 0.1


def _gram(x: np.ndarray | sparse.csr_matrix) -> np.ndarray:
    gram = x.T @ x
    return gram.toarray() if sparse.issparse(gram) else np.asarray(gram)


def ridge_oof_predictions(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> np.ndarray:
    """Out-of-fold ridge predictions float64[N, T] for targets y float[N, T] (all finite) from
    features x float[N, P]; outer folds grouped by `groups` (patients), penalty per target and fold
    by leave-one-patient-out inside the training fold (see the module docstring).

    Columns constant on these rows are dropped. Each fold's xᵀx is the total minus the test part's,
    so the N·P² product is formed once; dense x is first shifted by its mean over all rows (label-free,
    undone exactly by each fold's own centring) so that the uncentred sums lose no precision."""
    x = x[:, np.ptp(x, axis=0) > 0].astype(np.float64)
    x = sparse.csr_matrix(x) if np.count_nonzero(x) <= SPARSE_DENSITY * x.size else x - x.mean(axis=0)
    folds = grouped_folds(groups, n_folds)
    test_grams = [_gram(x[test_idx]) for _, test_idx in folds]
    total = np.sum(test_grams, axis=0)
    pred = np.empty(y.shape, dtype=np.float64)
    for (train_idx, test_idx), test_gram in zip(folds, test_grams, strict=True):
        path = RidgePath(x[train_idx], total - test_gram, y[train_idx])
        best = path.logo_squared_error(groups[train_idx]).argmin(axis=0)
        pred[test_idx] = path.predict(x[test_idx], best)
    return pred


def _skip_reason(metric: str, y: np.ndarray, groups: np.ndarray) -> str | None:
    """Why a probe of y float[n] (finite rows only) cannot be scored, or None."""
    if metric == "auroc" and len(np.unique(y)) < 2:
        return "only one class present on the probe rows"
    if metric == "r2" and np.ptp(y) == 0:
        return "label is constant on the probe rows"
    if len(np.unique(groups)) < MIN_PATIENTS:
        return f"fewer than {MIN_PATIENTS} patients with this label"
    return None


def _score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    return float(r2_score(y, pred) if metric == "r2" else roc_auc_score(y, pred))


def _by_known_rows(factors: dict[str, tuple[str, np.ndarray]],
                   names: list[str]) -> list[tuple[np.ndarray, list[str]]]:
    """Group factor names by the rows where their value is known: [(bool[N] mask, names)]. Factors
    known on the same rows share one fit."""
    groups: dict[bytes, tuple[np.ndarray, list[str]]] = {}
    for name in names:
        known = np.isfinite(factors[name][1])
        groups.setdefault(known.tobytes(), (known, []))[1].append(name)
    return list(groups.values())


def probe_all(x: np.ndarray, factors: dict[str, tuple[str, np.ndarray]], groups: np.ndarray,
              n_folds: int) -> dict[str, ProbeScore]:
    """Probe every factor (metric "r2" | "auroc", values float[N] with NaN = unknown) on x float[N, P].

    Factors known on the same rows share one ridge path per fold; skipped ones are logged with their
    reason."""
    if len(x) != len(groups):
        raise ValueError(f"x has {len(x)} rows but groups has {len(groups)}")
    scores: dict[str, ProbeScore] = {}
    scored = []
    for name, (metric, values) in factors.items():
        known = np.isfinite(values)
        reason = _skip_reason(metric, values[known], groups[known])
        if reason:
            scores[name] = ProbeScore(metric, None, reason)
            log.info("probe %s skipped: %s", name, reason)
        else:
            scored.append(name)
    for known, names in _by_known_rows(factors, scored):
        y = np.column_stack([factors[name][1][known] for name in names])
        pred = ridge_oof_predictions(x[known], y, groups[known], n_folds)
        for j, name in enumerate(names):
            metric = factors[name][0]
            scores[name] = ProbeScore(metric, _score(metric, y[:, j], pred[:, j]))
    return {name: scores[name] for name in factors}


def classification_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> ProbeScore:
    """Phase I phenotype probe (HTN, T2D): out-of-fold AUROC of the grouped ridge probe of a 0/1 label.

    x float[N, P] concepts, y float[N] in {0, 1} (NaN = unknown), groups[N] patient ids. One class only,
    or too few patients, is a skip with the reason (value None), never a crash.
    """
    return probe_all(x, {"label": ("auroc", np.asarray(y, dtype=float))}, groups, n_folds)["label"]


def regression_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_folds: int) -> ProbeScore:
    """Out-of-fold R² of the grouped ridge probe of a continuous factor y float[N] (NaN = unknown)."""
    return probe_all(x, {"factor": ("r2", np.asarray(y, dtype=float))}, groups, n_folds)["factor"]


def available_factors(meta: pd.DataFrame) -> dict[str, tuple[str, np.ndarray]]:
    """factor -> (metric, float[N] values) for every known factor column with at least one value."""
    found: dict[str, tuple[str, np.ndarray]] = {}
    for name in CONTINUOUS_FACTORS:
        if name in meta.columns:
            values = pd.to_numeric(meta[name], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(values).any():
                found[name] = ("r2", values)
    for name in BINARY_FACTORS:
        if name in meta.columns:
            values = binary_labels(meta[name])
            if np.isfinite(values).any():
                found[name] = ("auroc", values)
    return found


@dataclass
class SingleConcept:
    concept: int | None
    abs_r: float | None


def single_concept_recovery(codes: np.ndarray, y: np.ndarray) -> list[SingleConcept]:
    """Best |Pearson r| of any one concept with each target: codes float[N, K], y float[N, T] with all
    rows finite (one centring of the codes serves every target)."""
    x, targets = codes.astype(np.float64), y.astype(np.float64)
    mean = x.mean(axis=0)
    xc, yc = x - mean, targets - targets.mean(axis=0)
    spread = np.sqrt((xc * xc).sum(axis=0))
    constant = spread <= 1e-8 * np.abs(mean) * np.sqrt(len(x)) + 1e-300
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(constant[:, None], np.nan, (xc.T @ yc) / np.outer(spread, np.sqrt((yc * yc).sum(axis=0))))
    found = []
    for t in range(targets.shape[1]):
        if len(x) < 3 or np.ptp(targets[:, t]) == 0 or not np.isfinite(r[:, t]).any():
            found.append(SingleConcept(None, None))
            continue
        best = int(np.nanargmax(np.abs(r[:, t])))
        found.append(SingleConcept(best, float(min(abs(r[best, t]), 1.0))))
    return found


def single_concepts(codes: np.ndarray, factors: dict[str, tuple[str, np.ndarray]]) -> dict[str, SingleConcept]:
    """`single_concept_recovery` of every factor (values float[N], NaN rows dropped per factor)."""
    found: dict[str, SingleConcept] = {}
    for known, names in _by_known_rows(factors, list(factors)):
        y = np.column_stack([factors[name][1][known] for name in names])
        found.update(zip(names, single_concept_recovery(codes[known], y), strict=True))
    return {name: found[name] for name in factors}


# --- Held-out protocol of the evaluate stage: fit on train patients, score on val + test patients ----


def _probe_features(x_fit: np.ndarray, x_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop columns constant on the fit rows; centre both on the fit mean (label-free, keeps the
    uncentred Gram sums precise). Returns float64 copies."""
    keep = np.ptp(x_fit, axis=0) > 0
    x_fit, x_score = x_fit[:, keep].astype(np.float64), x_score[:, keep].astype(np.float64)
    mean = x_fit.mean(axis=0)
    return x_fit - mean, x_score - mean


def _ridge_fit(x_fit: np.ndarray, y_fit: np.ndarray, groups_fit: np.ndarray) -> tuple[RidgePath, np.ndarray]:
    """Ridge path on the fit rows and the penalty per target chosen by leave-one-patient-out."""
    path = RidgePath(x_fit, x_fit.T @ x_fit, y_fit)
    return path, path.logo_squared_error(groups_fit).argmin(axis=0)


def heldout_predictions(x_fit: np.ndarray, y_fit: np.ndarray, groups_fit: np.ndarray,
                        x_score: np.ndarray) -> np.ndarray:
    """Ridge probe fit on the fit rows (train patients), predictions float64[m, T] on x_score.

    x_fit float[n, P], y_fit float[n, T] (finite), groups_fit[n] patient ids, x_score float[m, P]. The
    penalty is chosen per target by exact leave-one-patient-out on the fit rows (see RidgePath)."""
    x_fit, x_score = _probe_features(x_fit, x_score)
    if x_fit.shape[1] == 0:
        return np.broadcast_to(y_fit.mean(axis=0), (len(x_score), y_fit.shape[1])).copy()
    path, best = _ridge_fit(x_fit, y_fit, groups_fit)
    return path.predict(x_score, best)


def adjusted_predictions(x_fit: np.ndarray, c_fit: np.ndarray, y_fit: np.ndarray, groups_fit: np.ndarray,
                         x_score: np.ndarray, c_score: np.ndarray) -> np.ndarray:
    """Probe of y on features x plus unpenalised covariates c (age, sex): float64[m, T] on score rows.

    Why Frisch–Waugh–Lovell: ridge that penalises only x's slopes equals ridge of y on x after both
    are residualised on [1, c], so the covariates enter at full strength whatever the penalty, and
    the increment over a covariates-only model measures what x adds beyond them. The penalty is
    chosen by leave-one-patient-out on the residualised fit rows (the covariate projection itself is
    fit on all of them: a handful of parameters). c_fit float[n, C], c_score float[m, C]."""
    x_fit, x_score = _probe_features(x_fit, x_score)
    design_fit = np.column_stack([np.ones(len(c_fit)), c_fit])
    design_score = np.column_stack([np.ones(len(c_score)), c_score])
    project = np.linalg.pinv(design_fit)  # [1 + C, n]
    gamma = np.zeros((x_fit.shape[1], y_fit.shape[1]))
    if x_fit.shape[1]:
        x_res, y_res = x_fit - design_fit @ (project @ x_fit), y_fit - design_fit @ (project @ y_fit)
        path, best = _ridge_fit(x_res, y_res, groups_fit)
        gamma = path.coefficients(best)
    beta = project @ (y_fit - x_fit @ gamma)
    return design_score @ beta + x_score @ gamma


def weighted_aurocs(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float64[B] AUROC of 0/1 labels y float[m] by `score` float[m] when row r is counted weights[b, r]
    times (int[B, m]); NaN where one class has no weight.

    The pairwise Mann–Whitney form Σ w_i w_j ([s_i > s_j] + ½[s_i = s_j]) / (W₊ W₋) over positive i and
    negative j, summed per distinct score from one sort. With integer weights every sum is an exact
    half-integer, so this equals the rank-sum AUROC of the expanded sample (each row repeated) bit for bit.
    """
    order = np.argsort(score, kind="stable")
    sorted_score, positive = score[order], y[order] == 1
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    w = weights[:, order].astype(np.float64)
    w_pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)  # [B, distinct scores]
    w_neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    numerator = (w_pos * (below + 0.5 * w_neg)).sum(axis=1)
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, numerator / pairs, np.nan)


def bootstrap_auroc_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, groups: np.ndarray,
                               n_boot: int, generator: np.random.Generator) -> tuple[float, float] | None:
    """95 % percentile CI of AUROC(score_a) − AUROC(score_b) over patient-bootstrap resamples.

    Whole patients are resampled with replacement (windows of one patient are not independent);
    resamples holding one class only are dropped; None when fewer than half survive. A resample is a
    row weight (how often its patient was drawn), so all resamples are scored at once (`weighted_aurocs`)."""
    ids, inverse = np.unique(groups, return_inverse=True)
    drawn = np.stack([np.bincount(generator.integers(0, len(ids), len(ids)), minlength=len(ids))
                      for _ in range(n_boot)]) if n_boot else np.zeros((0, len(ids)), dtype=np.int64)
    weights = drawn[:, inverse]
    differences = weighted_aurocs(y, score_a, weights) - weighted_aurocs(y, score_b, weights)
    differences = differences[np.isfinite(differences)]
    if len(differences) < n_boot / 2:
        return None
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def single_concepts_heldout(codes_fit: np.ndarray, factors_fit: dict[str, tuple[str, np.ndarray]],
                            codes_score: np.ndarray,
                            factors_score: dict[str, tuple[str, np.ndarray]]) -> dict[str, SingleConcept]:
    """Per factor: the concept with the largest |r| on the fit rows (train patients), and its |r| on
    the score rows (held-out patients). Choosing and scoring on the same rows would report the
    maximum of K noisy correlations, which is biased upwards; here the choice cannot see the score rows.
    A chosen concept that never varies on the score rows carries nothing there: |r| = 0."""
    chosen = single_concepts(codes_fit, factors_fit)
    found: dict[str, SingleConcept] = {}
    for name, best in chosen.items():
        values = factors_score[name][1]
        known = np.isfinite(values)
        if best.concept is None or known.sum() < 3:
            found[name] = SingleConcept(best.concept, None)
            continue
        column, target = codes_score[known, best.concept].astype(np.float64), values[known]
        if np.ptp(target) == 0:
            found[name] = SingleConcept(best.concept, None)
        elif np.ptp(column) == 0:
            found[name] = SingleConcept(best.concept, 0.0)
        else:
            found[name] = SingleConcept(best.concept, float(abs(np.corrcoef(column, target)[0, 1])))
    return found


PHENOTYPES = ("htn", "t2d")


@dataclass
class ProbeSet:
    """The probe rows of the evaluate stage: fit on train patients, scored on held-out patients.

    fit: bool[n] True for rows of train patients (False: val/test patients, the score side); groups:
    patient id per row; factors: factor -> (metric, float[n] values, NaN unknown); covariates:
    float[n, 2] (age, sex as 0/1) for the age+sex-adjusted phenotype probes, or None when unknown."""

    fit: np.ndarray
    groups: np.ndarray
    factors: dict[str, tuple[str, np.ndarray]]
    covariates: np.ndarray | None

    def sides(self, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fit rows, score rows) among the rows where `known` is True."""
        return known & self.fit, known & ~self.fit

    def skip_reason(self, metric: str, values: np.ndarray) -> str | None:
        fit, score = self.sides(np.isfinite(values))
        if len(np.unique(self.groups[fit])) < 2:
            return "fewer than 2 train patients with this label"
        if not score.any():
            return "no held-out (val/test) patient with this label"
        for side, rows in (("train", fit), ("held-out", score)):
            if metric == "auroc" and len(np.unique(values[rows])) < 2:
                return f"only one class present on the {side} probe rows"
            if metric == "r2" and np.ptp(values[rows]) == 0:
                return f"label is constant on the {side} probe rows"
        return None


def probe_heldout(x: np.ndarray, probes: ProbeSet) -> dict[str, ProbeScore]:
    """Probe every factor on x float[n, P]: ridge fit on train patients, R² / AUROC on held-out patients.

    Why held-out patients: cross-validating over every split let the probe of a representation fit on
    patients whose windows the representation was also judged on; fitting on the train split only and
    scoring on val + test asks what a probe learnt on the training cohort predicts for new patients.
    Factors known on the same rows share one fit; skipped ones carry the reason."""
    if len(x) != len(probes.groups):
        raise ValueError(f"x has {len(x)} rows but the probe set has {len(probes.groups)}")
    scores: dict[str, ProbeScore] = {}
    scored = []
    for name, (metric, values) in probes.factors.items():
        reason = probes.skip_reason(metric, values)
        if reason:
            scores[name] = ProbeScore(metric, None, reason)
        else:
            scored.append(name)
    for known, names in _by_known_rows(probes.factors, scored):
        fit, score = probes.sides(known)
        y = np.column_stack([probes.factors[name][1] for name in names])
        pred = heldout_predictions(x[fit], y[fit], probes.groups[fit], x[score])
        for j, name in enumerate(names):
            metric = probes.factors[name][0]
            scores[name] = ProbeScore(metric, _score(metric, y[score, j], pred[:, j]))
    return {name: scores[name] for name in probes.factors}


@dataclass
class AdjustedPhenotype:
    """Held-out AUROC of a phenotype from age + sex alone and from features + age + sex, on the same
    rows; increment = adjusted − age_sex with its patient-bootstrap 95 % CI."""

    age_sex: float
    adjusted: float
    increment: float
    increment_ci: tuple[float, float] | None


def phenotype_rows(probes: ProbeSet, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(fit rows, score rows) where the phenotype, age and sex are all known, or None if unusable."""
    if probes.covariates is None or name not in probes.factors:
        return None
    values = probes.factors[name][1]
    known = np.isfinite(values) & np.isfinite(probes.covariates).all(axis=1)
    if probes.skip_reason("auroc", np.where(known, values, np.nan)):
        return None
    return probes.sides(known)


def age_sex_scores(probes: ProbeSet) -> dict[str, np.ndarray]:
    """Held-out scores float[m] of each phenotype from an OLS fit on age + sex (train patients)."""
    found = {}
    for name in PHENOTYPES:
        rows = phenotype_rows(probes, name)
        if rows is not None:
            fit, score = rows
            c = probes.covariates
            assert c is not None
            found[name] = adjusted_predictions(np.zeros((fit.sum(), 0)), c[fit], probes.factors[name][1][fit, None],
                                               probes.groups[fit], np.zeros((score.sum(), 0)), c[score])[:, 0]
    return found


def adjusted_phenotypes(x: np.ndarray, probes: ProbeSet, age_sex: dict[str, np.ndarray], n_boot: int,
                        generator: np.random.Generator) -> dict[str, AdjustedPhenotype]:
    """`AdjustedPhenotype` of each phenotype in `age_sex` (from `age_sex_scores`) for features x float[n, P].

    Phenotypes known on the same rows share one residualisation and ridge path (one target each, its
    own penalty: the predictions equal separate fits to float rounding); the bootstrap draws follow the
    phenotype order, as they did with one fit per phenotype."""
    covariates = probes.covariates
    assert covariates is not None
    sides: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sharing: dict[bytes, list[str]] = {}
    for name in age_sex:
        rows = phenotype_rows(probes, name)
        assert rows is not None
        sides[name] = rows
        sharing.setdefault(np.concatenate(rows).tobytes(), []).append(name)
    predictions: dict[str, np.ndarray] = {}
    for names in sharing.values():
        fit, score = sides[names[0]]
        y = np.column_stack([probes.factors[name][1] for name in names])
        pred = adjusted_predictions(x[fit], covariates[fit], y[fit], probes.groups[fit], x[score], covariates[score])
        predictions.update({name: pred[:, j] for j, name in enumerate(names)})
    found = {}
    for name, baseline in age_sex.items():
        score = sides[name][1]
        y, pred = probes.factors[name][1][score], predictions[name]
        reference, adjusted = roc_auc_score(y, baseline), roc_auc_score(y, pred)
        ci = bootstrap_auroc_difference(y, pred, baseline, probes.groups[score], n_boot, generator)
        found[name] = AdjustedPhenotype(float(reference), float(adjusted), float(adjusted - reference), ci)
    return found
