"""What does a concept look like in the waveform? Decile pulses and a concept × morphology correlation table.

Why: a concept that predicts age is only interpretable if the pulses where it fires strongly differ
visibly, and in named clinical features, from those where it is silent. Bands are bootstrap percentiles
over windows (seeded); correlations are Spearman (monotone, robust to the skewed sparse activations)
with Benjamini–Hochberg FDR over the whole table, since many concept × feature pairs are tested.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning, spearmanr

from stsae.errors import StsaeError

log = logging.getLogger(__name__)

BAND_PERCENTILES = (2.5, 97.5)


@dataclass(frozen=True)
class ConceptGrounding:
    """high_*/low_*: float32[L] mean pulse and 95 % bootstrap band of the top / bottom activation fraction;
    morphology_diff: {feature: mean(high) − mean(low)} (NaN-aware)."""

    concept: int
    high_mean: np.ndarray
    high_lo: np.ndarray
    high_hi: np.ndarray
    low_mean: np.ndarray
    low_lo: np.ndarray
    low_hi: np.ndarray
    morphology_diff: dict[str, float]


def top_concepts_by_weight(coef: np.ndarray, n: int) -> np.ndarray:
    """int64[≤ n] concepts with the largest |age-predictor coefficient|, zeros excluded, largest first."""
    order = np.argsort(-np.abs(coef), kind="stable")
    return order[np.abs(coef[order]) > 0][:n].astype(np.int64)


def _mean_and_band(pulses: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    draws = rng.integers(0, len(pulses), size=(n_bootstrap, len(pulses)))
    boot = pulses[draws].mean(axis=1)
    lo, hi = np.percentile(boot, BAND_PERCENTILES, axis=0)
    return pulses.mean(axis=0).astype(np.float32), lo.astype(np.float32), hi.astype(np.float32)


def ground_concept(
    concept: int,
    activation: np.ndarray,
    pulses: np.ndarray,
    morphology: pd.DataFrame,
    *,
    decile: float,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> ConceptGrounding:
    """Average pulse of the windows where `concept` is highest vs lowest, with bootstrap bands.

    activation: float[N] the concept's activation per window; pulses: float32[N, L] average pulses (NaN
    rows are skipped); morphology: N rows of numeric features. `decile` is the fraction taken at each end
    (ties broken by window order, so a mostly-silent concept's low group is a fixed set of silent windows).
    """
    if activation.shape != (pulses.shape[0],) or len(morphology) != pulses.shape[0]:
        raise ValueError(
            f"activation {activation.shape}, pulses {pulses.shape} and morphology must share rows"
        )
    usable = np.flatnonzero(np.isfinite(pulses).all(axis=1))
    n_end = int(np.floor(decile * len(usable)))
    if n_end < 2:
        raise StsaeError(
            f"concept {concept}: {len(usable)} windows with a pulse give fewer than 2 per {decile:.0%} group "
            "(raise grounding.max_windows or grounding.decile)"
        )
    ranked = usable[np.argsort(activation[usable], kind="stable")]
    low, high = ranked[:n_end], ranked[-n_end:]
    high_mean, high_lo, high_hi = _mean_and_band(pulses[high], n_bootstrap, rng)
    low_mean, low_lo, low_hi = _mean_and_band(pulses[low], n_bootstrap, rng)
    numeric = morphology.select_dtypes("number")
    diff = (numeric.iloc[high].mean() - numeric.iloc[low].mean()).to_dict()
    return ConceptGrounding(
        concept=int(concept),
        high_mean=high_mean,
        high_lo=high_lo,
        high_hi=high_hi,
        low_mean=low_mean,
        low_lo=low_lo,
        low_hi=low_hi,
        morphology_diff={k: float(v) for k, v in diff.items()},
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


def correlate_concepts_with_morphology(
    activations: np.ndarray, concepts: np.ndarray, morphology: pd.DataFrame
) -> pd.DataFrame:
    """Spearman rho and p of every concept × numeric morphology feature, with BH q over the whole table.

    activations: float[N, C], column j ↔ concepts[j]; morphology: N rows. Each pair uses the windows
    where that feature is present; a constant concept or feature gives NaN rho/p/q, not an error.
    Returns columns concept, feature, rho, p, q (concept-major, features in column order).
    """
    if activations.shape != (len(morphology), len(concepts)):
        raise ValueError(f"activations {activations.shape} must be [{len(morphology)}, {len(concepts)}]")
    rows = []
    numeric = morphology.select_dtypes("number")
    for j, concept in enumerate(concepts):
        for feature in numeric.columns:
            values = numeric[feature].to_numpy(dtype=np.float64)
            present = np.isfinite(values)
            rho, p = np.nan, np.nan
            if present.sum() >= 3:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConstantInputWarning)
                    result = spearmanr(activations[present, j], values[present])
                rho, p = float(result.statistic), float(result.pvalue)
            rows.append({"concept": int(concept), "feature": feature, "rho": rho, "p": p})
    table = pd.DataFrame(rows, columns=["concept", "feature", "rho", "p"])
    table["q"] = benjamini_hochberg(table["p"].to_numpy(dtype=np.float64))
    return table
