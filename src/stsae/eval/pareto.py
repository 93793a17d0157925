"""Pareto frontier over (L0, EV): the models no other model beats on both sparsity and reconstruction."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_frontier(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated points; each point is (l0, ev).

    Lower L0 and higher EV are better. Point i is dominated when some j has l0_j <= l0_i and
    ev_j >= ev_i with at least one strict; equal points do not dominate each other, so duplicates on
    the front are all kept. Points with a NaN/None coordinate are never on the front.
    O(n log n): sort by (l0 ascending, ev descending) and keep points whose EV beats every earlier L0.
    """
    valid = [i for i, (l0, ev) in enumerate(points)
             if l0 is not None and ev is not None and not math.isnan(l0) and not math.isnan(ev)]
    order = sorted(valid, key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best_ev = -math.inf
    best_ev_prev_l0 = -math.inf
    current_l0: float | None = None
    for i in order:
        l0, ev = points[i]
        if l0 != current_l0:
            best_ev_prev_l0 = best_ev
            current_l0 = l0
        if ev > best_ev_prev_l0 and ev >= best_ev:
            front.append(i)
        best_ev = max(best_ev, ev)
    return sorted(front)
