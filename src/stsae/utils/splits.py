"""Patient-level, age-stratified train/val/test split: no patient's windows ever cross splits."""

from __future__ import annotations

import numpy as np
import pandas as pd

from stsae.errors import StsaeError
from stsae.utils.seeding import rng

SPLITS = ("train", "val", "test")


class SplitError(StsaeError, ValueError):
    """The cohort cannot be split as configured (e.g. too few patients)."""


def patient_split(
    patients: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    age_bin_edges: list[float],
    seed: int,
) -> pd.Series:
    """Assign each patient to train/val/test, stratified by age bin.

    patients: one row per patient with columns `patient_id` and `age` (NaN allowed: its own stratum).
    Returns a Series indexed by patient_id with values in SPLITS. Within each age bin the patients are
    shuffled and cut by the fractions, so every split keeps the cohort's age distribution.
    """
    if patients["patient_id"].duplicated().any():
        raise SplitError("patient_split: patient_id must be unique per row")
    n = len(patients)
    if n < 3:
        raise SplitError(
            f"cohort has {n} patient(s); a patient-level train/val/test split needs at least 3"
        )
    if val_fraction + test_fraction >= 1:
        raise SplitError("data.split.val_fraction + data.split.test_fraction must be < 1")
    ages = patients["age"].to_numpy(dtype=float)
    bins = np.where(np.isnan(ages), -1, np.digitize(np.nan_to_num(ages), age_bin_edges))
    generator = rng(seed, "split")
    assignment = pd.Series(index=patients["patient_id"].to_numpy(), dtype=object)
    leftovers: list[float] = [0.0, 0.0]
    for stratum in np.unique(bins):
        ids = patients["patient_id"].to_numpy()[bins == stratum]
        ids = ids[generator.permutation(len(ids))]
        exact_test = len(ids) * test_fraction + leftovers[0]
        exact_val = len(ids) * val_fraction + leftovers[1]
        n_test, n_val = round(exact_test), round(exact_val)
        leftovers = [exact_test - n_test, exact_val - n_val]
        assignment[ids[:n_test]] = "test"
        assignment[ids[n_test : n_test + n_val]] = "val"
        assignment[ids[n_test + n_val :]] = "train"
    _ensure_every_split_nonempty(assignment)
    return assignment


def _ensure_every_split_nonempty(assignment: pd.Series) -> None:
    """Small cohorts can round a split to zero patients; move one patient from train in that case."""
    for split in ("test", "val"):
        if (assignment == split).sum() == 0:
            train_ids = assignment.index[assignment == "train"]
            if len(train_ids) <= 1:
                raise SplitError("cohort too small to give train, val and test at least one patient")
            assignment[train_ids[-1]] = split
