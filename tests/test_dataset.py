"""WindowTripletDataset: temporal pairs are always two consecutive windows of one record and one split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stsae.data.dataset import WindowTripletDataset, temporal_pairs


@st.composite
def _indices(draw: st.DrawFn) -> pd.DataFrame:
    """Records with random QC gaps in segment_idx, rows shuffled, each record in a random split."""
    rows = []
    for record in range(draw(st.integers(1, 6))):
        segments = draw(st.lists(st.integers(0, 30), min_size=0, max_size=25, unique=True))
        split = draw(st.sampled_from(["train", "val", "test"]))
        rows += [{"record_id": f"rec{record}", "segment_idx": s, "split": split} for s in segments]
    frame = pd.DataFrame(rows, columns=["record_id", "segment_idx", "split"])
    order = draw(st.permutations(range(len(frame))))
    return frame.iloc[list(order)].reset_index(drop=True)


def _expected_pairs(index: pd.DataFrame) -> set[tuple[int, int]]:
    where = {(r, s): i for i, (r, s) in enumerate(zip(index["record_id"], index["segment_idx"], strict=True))}
    return {(i, where[(r, s + 1)]) for (r, s), i in where.items() if (r, s + 1) in where}


@given(index=_indices())
@settings(max_examples=60, deadline=None)
def test_pairs_never_cross_records_or_gaps_and_none_are_missed(index: pd.DataFrame) -> None:
    pairs = temporal_pairs(index)
    assert pairs.dtype == np.int64
    assert {tuple(p) for p in pairs.tolist()} == _expected_pairs(index)


@given(index=_indices(), split=st.sampled_from(["train", "val", "test"]))
@settings(max_examples=40, deadline=None)
def test_triplets_stay_within_one_record_and_the_requested_split(index: pd.DataFrame, split: str) -> None:
    z = np.arange(len(index), dtype=np.float32)[:, None].repeat(4, axis=1)
    dataset = WindowTripletDataset(z, z + 0.5, index, split=split)
    if len(dataset) == 0:
        return
    z_t, z_t1, z_aug_t = dataset.batch(np.arange(len(dataset)))
    rows_t, rows_t1 = z_t[:, 0].long().numpy(), z_t1[:, 0].long().numpy()
    assert (index["record_id"].to_numpy()[rows_t] == index["record_id"].to_numpy()[rows_t1]).all()
    assert (index["segment_idx"].to_numpy()[rows_t1] == index["segment_idx"].to_numpy()[rows_t] + 1).all()
    assert (index["split"].to_numpy()[rows_t] == split).all()
    assert torch.equal(z_aug_t, z_t + 0.5)


def test_getitem_returns_one_float32_triplet() -> None:
    index = pd.DataFrame({"record_id": ["a", "a", "b"], "segment_idx": [0, 1, 0], "split": ["train"] * 3})
    z = np.eye(3, 4, dtype=np.float32)
    dataset = WindowTripletDataset(z, z * 2, index)
    z_t, z_t1, z_aug_t = dataset[0]
    assert len(dataset) == 1
    assert z_t.dtype == torch.float32 and z_t.shape == (4,)
    assert torch.equal(z_t1, torch.from_numpy(z[1])) and torch.equal(z_aug_t, 2 * z_t)
