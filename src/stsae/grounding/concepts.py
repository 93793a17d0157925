"""What does a concept look like in the waveform? Decile pulses and a concept × morphology correlation table.

Why: a concept that predicts age is only interpretable if the pulses where it fires strongly differ
visibly, and in named clinical features, from those where it fires weakly or not at all. Three groups per
concept: the highest and the lowest decile of the windows where it fires (ties broken at random, never
by window order, which would pick the first patients' windows) and a sample of SILENT windows spread
across patients. Windows of one patient are not independent, so every band is a cluster
bootstrap over patients and every correlation is Spearman over patient means, with Benjamini–Hochberg
FDR over the whole table since many concept × feature pairs are tested.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning, spearmanr

from stsae.errors import StsaeError

log = logging.getLogger(__name__)

BAND_PERCENTILES = (2.5, 97.5)
GROUPS = ("high", "low", "silent")
"""high / low: top / bottom decile of the windows where the concept fires; silent: activation ≤ 0."""
MIN_GROUP = 2
"""A group with fewer windows than this gets NaN pulses (a concept that almost never fires or never rests)."""


class PulseBand(NamedTuple):
    """rows: int64[n] the windows of the group; mean, lo, hi: float32[L] mean pulse and its 95 % band."""

    rows: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


class DecileRows(NamedTuple):
    """int64 window rows of the three groups (see GROUPS)."""

    high: np.ndarray
    low: np.ndarray
    silent: np.ndarray


@dataclass(frozen=True)
class ConceptGrounding:
    """Pulse bands of the three groups; morphology_diff / morphology_diff_silent: {feature: median(high) −
    median(low) / median(silent)} (NaN-aware; NaN when a group is too small)."""

    concept: int
    high: PulseBand
    low: PulseBand
    silent: PulseBand
    morphology_diff: dict[str, float]
    morphology_diff_silent: dict[str, float]


def top_concepts_by_weight(coef: np.ndarray, n: int) -> np.ndarray:
    """int64[≤ n] concepts with the largest |age-predictor coefficient|, zeros excluded, largest first."""
    order = np.argsort(-np.abs(coef), kind="stable")
    return order[np.abs(coef[order]) > 0][:n].astype(np.int64)


def cluster_bootstrap_band(pulses: np.ndarray, patients: np.ndarray, rows: np.ndarray, n_bootstrap: int,
                           rng: np.random.Generator) -> PulseBand:
    """Mean pulse of `rows` and a percentile band from resampling whole patients with replacement.

    pulses: float32[N, L]; patients: [N] patient id per window. Each replicate draws as many patients as
    the group has and averages all their windows in the group, so the band reflects between-patient
    spread; with one window per patient it is the ordinary bootstrap over windows.
    """
    if len(rows) < MIN_GROUP:
        nan = np.full(pulses.shape[1], np.nan, dtype=np.float32)
        return PulseBand(np.asarray(rows, dtype=np.int64), nan, nan, nan)
    codes, unique = pd.factorize(np.asarray(patients)[rows])
    sums = np.zeros((len(unique), pulses.shape[1]))
    np.add.at(sums, codes, pulses[rows])
    counts = np.bincount(codes, minlength=len(unique)).astype(np.float64)
    draws = rng.integers(0, len(unique), size=(n_bootstrap, len(unique)))
    weights = np.zeros((n_bootstrap, len(unique)))
    np.add.at(weights, (np.repeat(np.arange(n_bootstrap), len(unique)), draws.ravel()), 1.0)
    boot = (weights @ sums) / (weights @ counts)[:, None]
    lo, hi = np.percentile(boot, BAND_PERCENTILES, axis=0)
    mean = pulses[rows].mean(axis=0)
    return PulseBand(np.asarray(rows, dtype=np.int64), *(v.astype(np.float32) for v in (mean, lo, hi)))


def _spread_over_patients(rows: np.ndarray, patients: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n of `rows` at random, one window per patient before any patient gets a second."""
    shuffled = rng.permutation(rows)
    owners = pd.Series(np.asarray(patients)[shuffled])
    turn = owners.groupby(owners, sort=False).cumcount().to_numpy()  # k-th window of its patient
    return shuffled[np.argsort(turn, kind="stable")][:n]


def decile_groups(activation: np.ndarray, usable: np.ndarray, patients: np.ndarray, *, decile: float,
                  rng: np.random.Generator) -> DecileRows:
    """The high, lowest-active and silent window rows of one concept (ties at random, never by order).

    activation: float[N]; usable: int64[U] rows with a pulse; patients: [N]. high / low: the top / bottom
    `decile` of the A active windows (activation > 0), at least MIN_GROUP each when A allows and never
    overlapping (at most A // 2 each), so a sparse concept's groups are not filled with silent windows;
    silent: floor(decile · U) windows with activation ≤ 0, spread over patients.
    """
    ranked = usable[np.lexsort((rng.random(len(usable)), activation[usable]))]  # ascending, random ties
    active = ranked[activation[ranked] > 0]
    n_group = min(max(MIN_GROUP, int(np.floor(decile * len(active)))), len(active) // 2)
    silent = _spread_over_patients(ranked[activation[ranked] <= 0], patients,
                                   int(np.floor(decile * len(usable))), rng)
    return DecileRows(high=active[len(active) - n_group:][::-1], low=active[:n_group], silent=np.sort(silent))


def _median_diff(numeric: pd.DataFrame, first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    if min(len(first), len(second)) < MIN_GROUP:
        return dict.fromkeys(numeric.columns, float("nan"))
    diff = numeric.iloc[first].median() - numeric.iloc[second].median()
    return {k: float(v) for k, v in diff.items()}


def ground_concept(
    concept: int,
    activation: np.ndarray,
    pulses: np.ndarray,
    morphology: pd.DataFrame,
    patients: np.ndarray,
    *,
    decile: float,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> ConceptGrounding:
    """Average pulse of the concept's highest, lowest-active and silent windows, with patient-bootstrap bands.

    activation: float[N] the concept's activation per window; pulses: float32[N, L] average pulses (NaN
    rows are skipped); morphology: N rows of numeric features; patients: [N] patient id per window.
    Groups as in `decile_groups`; rng draws ties, the silent sample and the bootstrap. Too few windows
    with a pulse for a decile of MIN_GROUP is a user error.
    """
    if activation.shape != (pulses.shape[0],) or len(morphology) != pulses.shape[0] or len(patients) != len(
        activation
    ):
        raise ValueError(
            f"activation {activation.shape}, pulses {pulses.shape}, morphology ({len(morphology)}) and "
            f"patients ({len(patients)}) must share rows"
        )
    usable = np.flatnonzero(np.isfinite(pulses).all(axis=1))
    if int(np.floor(decile * len(usable))) < MIN_GROUP:
        raise StsaeError(
            f"concept {concept}: {len(usable)} windows with a pulse give fewer than {MIN_GROUP} per "
            f"{decile:.0%} group (raise grounding.max_windows or grounding.decile)"
        )
    groups = decile_groups(activation, usable, patients, decile=decile, rng=rng)
    for name, rows in groups._asdict().items():
        if len(rows) < MIN_GROUP:
            log.warning("concept %d: %d %s windows; its pulse is left NaN", concept, len(rows), name)
    bands = {name: cluster_bootstrap_band(pulses, patients, rows, n_bootstrap, rng)
             for name, rows in groups._asdict().items()}
    numeric = morphology.select_dtypes("number")
    return ConceptGrounding(
        concept=int(concept),
        **bands,
        morphology_diff=_median_diff(numeric, groups.high, groups.low),
        morphology_diff_silent=_median_diff(numeric, groups.high, groups.silent),
    )


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH FDR q-values of float[M] p-values; NaN p-values stay NaN and do not count as tests."""
    q = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if len(finite) == 0:
        return q
    order = finite[np.argsort(p[finite])]
    ranks = np.arange(1, len(order) + 1)
    scaled = p[order] * len(order) / ranks
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(rho, p); NaN for fewer than 3 points or a constant input."""
    if len(a) < 3:
        return np.nan, np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        result = spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def correlate_concepts_with_morphology(
    activations: np.ndarray, concepts: np.ndarray, morphology: pd.DataFrame, patients: np.ndarray
) -> pd.DataFrame:
    """Spearman rho and p over PATIENT MEANS of every concept × numeric morphology feature, BH q over the table.

    Why patient means: windows of one patient share that patient's morphology and concept levels, so a
    window-level test counts one person's windows as independent evidence and rejects far too often; over
    patient means each person is one observation. activations: float[N, C], column j ↔ concepts[j];
    morphology: N rows; patients: [N] patient id per window. Each pair uses the windows where that feature
    is present; a constant concept or feature, or fewer than 3 patients, gives NaN rho/p/q, not an error.
    Returns columns concept, feature, rho, p, q, n_patients (concept-major, features in column order).
    """
    if activations.shape != (len(morphology), len(concepts)) or len(patients) != len(morphology):
        raise ValueError(
            f"activations {activations.shape} must be [{len(morphology)}, {len(concepts)}] and patients "
            f"({len(patients)}) one per window"
        )
    codes, _ = pd.factorize(np.asarray(patients))
    numeric = morphology.select_dtypes("number")
    patient_means = {}  # feature -> [patients with the feature, C concepts + "_feature"]
    for feature in numeric.columns:
        values = numeric[feature].to_numpy(dtype=np.float64)
        present = np.isfinite(values)
        frame = pd.DataFrame(activations[present]).assign(_feature=values[present])
        patient_means[feature] = frame.groupby(codes[present]).mean()
    rows = []
    for j, concept in enumerate(concepts):
        for feature, means in patient_means.items():
            rho, p = _spearman(means[j].to_numpy(), means["_feature"].to_numpy())
            rows.append({"concept": int(concept), "feature": feature, "rho": rho, "p": p, "n_patients": len(means)})
    table = pd.DataFrame(rows, columns=["concept", "feature", "rho", "p", "n_patients"])
    table["q"] = benjamini_hochberg(table["p"].to_numpy(dtype=np.float64))
    return table[["concept", "feature", "rho", "p", "q", "n_patients"]]
