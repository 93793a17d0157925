"""Patient-level, age-stratified splits."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.utils.splits import SPLITS, SplitError, patient_split

EDGES = [0, 40, 55, 70, 200]


def _patients(ages: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": [f"p{i}" for i in range(len(ages))], "age": ages})


@settings(max_examples=60, deadline=None)
@given(
    ages=st.lists(st.floats(20, 90), min_size=60, max_size=400),
    seed=st.integers(0, 10_000),
)
def test_every_patient_lands_in_exactly_one_split_with_age_bins_preserved(ages, seed):
    patients = _patients(ages)
    split = patient_split(patients, 0.15, 0.2, EDGES, seed)
    assert split.index.is_unique and set(split.index) == set(patients["patient_id"])
    assert set(split.unique()) <= set(SPLITS)
    bins = np.digitize(np.array(ages), EDGES)
    for stratum in np.unique(bins):
        members = patients["patient_id"][bins == stratum]
        test_share = (split[members] == "test").mean()
        # rounding with carried remainders keeps each bin within one patient of its share
        assert abs(test_share * len(members) - 0.2 * len(members)) <= 1.0 + 1e-9


def test_split_is_reproducible_and_seed_dependent():
    patients = _patients(list(np.linspace(20, 90, 100)))
    a = patient_split(patients, 0.15, 0.2, EDGES, 1)
    assert a.equals(patient_split(patients, 0.15, 0.2, EDGES, 1))
    assert not a.equals(patient_split(patients, 0.15, 0.2, EDGES, 2))


def test_patients_without_age_are_split_too():
    patients = _patients([float("nan")] * 10 + list(np.linspace(20, 90, 30)))
    split = patient_split(patients, 0.2, 0.2, EDGES, 0)
    assert split.notna().all()


def test_single_patient_cohort_is_a_clear_error():
    with pytest.raises(SplitError, match="cohort has 1 patient"):
        patient_split(_patients([50.0]), 0.15, 0.2, EDGES, 0)


def test_tiny_cohort_still_gets_all_three_splits():
    split = patient_split(_patients([30.0, 45.0, 80.0]), 0.15, 0.2, EDGES, 0)
    assert sorted(split.unique()) == sorted(SPLITS)
