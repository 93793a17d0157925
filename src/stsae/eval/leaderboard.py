"""The leaderboard and Pareto files of the evaluate stage (schema in docs/CONTRACTS.md) and their table.

Every row carries every schema key; a metric that could not be computed is null and its reason is in
the row's `reasons` dict (metric key -> why), so the report never has to guess.
"""

from __future__ import annotations

import logging
import math
from io import StringIO
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from stsae.eval.pareto import pareto_frontier
from stsae.utils import io

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: within-record lag-1, held-out consistency and probes, live-atom stability, is_main
ROW_KEYS = (
    "model", "family", "variant", "K", "seed", "matched_sparsity", "k_active", "is_main",
    "ev", "l0", "dead_fraction_train", "dead_window_samples", "never_fired_test_fraction", "n_test_windows",
    "consistency_jaccard", "consistency_cosine", "consistency_heldout_aug",
    "lag1_within_record", "between_record_variance_share", "lag1_pooled", "lag1_pooled_unweighted",
    "seed_stability_mean_cos", "seed_stability_frac_07", "seed_stability_frac_09",
    "subsample_stability_mean_cos", "subsample_stability_frac_07", "subsample_stability_frac_09",
    "stability_live_atoms", "stability_null_data_mean_cos", "stability_null_data_frac_07",
    "stability_null_isotropic_mean_cos",
    "probe", "single_concept",
)
REASONS_KEY = "reasons"


def new_row(model: str, family: str, variant: str, k: int, seed: int | None, matched_sparsity: bool = False,
            k_active: int | None = None, is_main: bool = False) -> dict[str, Any]:
    """A row with identity filled in and every metric null (to be filled or given a reason).

    is_main: the row of the one main model (`stsae.train.grid.main_entry`), so readers of the rows
    alone find it without re-deriving the choice."""
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(model=model, family=family, variant=variant, K=k, seed=seed, matched_sparsity=matched_sparsity,
               k_active=k_active, is_main=is_main, probe={}, single_concept={})
    row[REASONS_KEY] = {}
    return row


def skip(row: dict[str, Any], keys: tuple[str, ...] | list[str], reason: str) -> None:
    """Set `keys` of `row` to null and record why."""
    for key in keys:
        row[key] = None
        row[REASONS_KEY][key] = reason


def _check_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        missing = [key for key in (*ROW_KEYS, REASONS_KEY) if key not in row]
        if missing:
            raise ValueError(f"leaderboard row {row.get('model')!r} lacks key(s) {missing}")


def write_leaderboard(path: Path, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> None:
    """eval/leaderboard.json: {"schema_version": SCHEMA_VERSION, "rows": [...], **extra} (NaN written as null)."""
    _check_rows(rows)
    io.write_json(path, {"schema_version": SCHEMA_VERSION, "rows": rows, **(extra or {})})


def pareto_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows on the (L0, EV) plane: ST-SAE models and baselines at matched sparsity (not dense baselines)."""
    return [row for row in rows if row["family"] == "stsae" or row["matched_sparsity"]]


def pareto_payload(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """eval/pareto.json content: {"points": [{model, l0, ev, on_front}], "front": [model, ...]}."""
    candidates = pareto_rows(rows)
    coords = [(_as_float(r["l0"]), _as_float(r["ev"])) for r in candidates]
    front = set(pareto_frontier(coords))
    points = [{"model": r["model"], "l0": r["l0"], "ev": r["ev"], "on_front": i in front}
              for i, r in enumerate(candidates)]
    return {"points": points, "front": [candidates[i]["model"] for i in sorted(front)]}


def _as_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a fixed-width rich table (plain text, for the log)."""
    table = Table(title="leaderboard (test split)")
    columns = ("model", "k_active", "ev", "l0", "dead_fraction_train", "consistency_heldout_aug",
               "lag1_within_record", "seed_stability_mean_cos", "stability_null_data_mean_cos")
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        name = row["model"] + (" @k" if row["matched_sparsity"] else "")
        table.add_row(name, *(_fmt(row[c]) for c in columns[1:]))
    console = Console(width=160, record=True, file=StringIO())
    console.print(table)
    return console.export_text()
