"""pareto_frontier: the non-dominated (low L0, high EV) points, checked against brute force."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from stsae.eval.pareto import pareto_frontier


def _brute_force(points: list[tuple[float, float]]) -> list[int]:
    def dominated(i: int) -> bool:
        l0, ev = points[i]
        return any(p[0] <= l0 and p[1] >= ev and (p[0] < l0 or p[1] > ev) for p in points)

    return [i for i, p in enumerate(points) if not math.isnan(p[0]) and not math.isnan(p[1])
            and not dominated(i)]


coords = st.floats(min_value=0, max_value=10, allow_nan=False).map(lambda v: round(v, 1))


@given(st.lists(st.tuples(coords, coords), max_size=30))
def test_front_matches_brute_force(points: list[tuple[float, float]]) -> None:
    assert pareto_frontier(points) == _brute_force(points)


def test_nan_points_are_never_on_the_front() -> None:
    assert pareto_frontier([(1.0, float("nan")), (2.0, 0.5)]) == [1]


def test_duplicates_on_the_front_are_all_kept() -> None:
    assert pareto_frontier([(1.0, 0.9), (1.0, 0.9), (2.0, 0.8)]) == [0, 1]
