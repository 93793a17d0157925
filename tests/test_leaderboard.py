"""LeaderboardRow is leaderboard.json's row: it round-trips the file exactly and refuses a malformed row in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from run_fixture import write_fake_run
from stsae.errors import InputDataError
from stsae.eval.leaderboard import (
    ROW_KEYS,
    LeaderboardRow,
    pareto_payload,
    read_leaderboard_rows,
    write_leaderboard,
)


def _board(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A realistic leaderboard.json (every family, matched-sparsity rows, probes, nulls) and its content."""
    path = write_fake_run(tmp_path / "run").leaderboard
    return path, json.loads(path.read_text())


def _edited(path: Path, board: dict[str, Any], row: int, edit: dict[str, Any], drop: str | None = None) -> Path:
    board["rows"][row].update(edit)
    if drop is not None:
        del board["rows"][row][drop]
    path.write_text(json.dumps(board))
    return path


def test_leaderboard_json_round_trips_through_rows_byte_for_byte(tmp_path: Path) -> None:
    path, board = _board(tmp_path)
    rows = read_leaderboard_rows(path)
    assert len(rows) == len(board["rows"]) > 10
    assert {row.family for row in rows} == {"stsae", "pca", "ica", "nmf"}
    assert any(row.matched_sparsity for row in rows) and any(row.seed_stability_mean_cos is None for row in rows)
    copy = tmp_path / "copy.json"
    write_leaderboard(copy, rows, {k: v for k, v in board.items() if k not in ("schema_version", "rows")})
    assert copy.read_bytes() == path.read_bytes()


def test_d_dict_is_stored_under_the_file_key_K_in_file_order() -> None:
    row = LeaderboardRow(model="pca-n16", family="pca", variant="pca", d_dict=16, seed=0)
    stored = row.to_json()
    assert list(stored) == [*ROW_KEYS, "reasons"] and stored["K"] == 16 and "d_dict" not in stored
    assert LeaderboardRow.from_json(stored, "row") == row


def test_nan_is_written_as_null_and_read_back_as_none(tmp_path: Path) -> None:
    row = LeaderboardRow(model="stsae-full-K8-s0", family="stsae", variant="full", d_dict=8, seed=0,
                         ev=math.nan, l0=3.0)
    write_leaderboard(tmp_path / "leaderboard.json", [row])
    (back,) = read_leaderboard_rows(tmp_path / "leaderboard.json")
    assert back.ev is None and back.l0 == 3.0


@pytest.mark.parametrize(("edit", "drop", "message"), [
    ({}, "ev", r"rows\[2\]: missing field\(s\) 'ev'"),
    ({}, "reasons", r"rows\[2\]: missing field\(s\) 'reasons'"),
    ({"l0_test": 3.0}, None, r"rows\[2\]: unknown field\(s\) 'l0_test'"),
    ({"K": "1024"}, None, r"rows\[2\]: field 'K' is string '1024', expected integer"),
    ({"ev": True}, None, r"rows\[2\]: field 'ev' is boolean True, expected number or null"),
    ({"seed": 0.5}, None, r"rows\[2\]: field 'seed' is number 0.5, expected integer or null"),
    ({"probe": {"age": 0.9}}, None, r"rows\[2\]: field 'probe'\['age'\] is number 0.9, expected object"),
])
def test_a_malformed_row_is_a_one_line_error_naming_the_file_row_and_field(
        tmp_path: Path, edit: dict[str, Any], drop: str | None, message: str) -> None:
    path, board = _board(tmp_path)
    with pytest.raises(InputDataError, match=r"leaderboard\.json: " + message) as caught:
        read_leaderboard_rows(_edited(path, board, 2, edit, drop))
    assert "\n" not in str(caught.value)


def test_another_schema_version_or_no_row_list_is_refused(tmp_path: Path) -> None:
    path, board = _board(tmp_path)
    path.write_text(json.dumps({**board, "schema_version": 1}))
    with pytest.raises(InputDataError, match=r"leaderboard\.json: field 'schema_version' is 1, expected 2"):
        read_leaderboard_rows(path)
    path.write_text(json.dumps({**board, "rows": {"model": "x"}}))
    with pytest.raises(InputDataError, match=r"leaderboard\.json: field 'rows' must be a list"):
        read_leaderboard_rows(path)


def test_a_missing_leaderboard_names_the_stage_to_run(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"leaderboard\.json: missing \(run `stsae evaluate` first\)"):
        read_leaderboard_rows(tmp_path / "leaderboard.json")


def test_skip_nulls_the_metrics_and_records_why_and_a_misspelt_metric_is_refused() -> None:
    row = LeaderboardRow(model="nmf-n8", family="nmf", variant="nmf", d_dict=8, seed=0, ev=0.5, l0=8.0)
    row.skip(("ev", "l0"), "no test windows")
    assert (row.ev, row.l0) == (None, None) and row.reasons == {"ev": "no test windows", "l0": "no test windows"}
    with pytest.raises(AttributeError):
        row.assign(("seed_stabilty_mean_cos",), (0.5,))


def test_pareto_points_are_stsae_and_matched_sparsity_rows_only() -> None:
    def row(model: str, family: str, matched: bool, l0: float, ev: float) -> LeaderboardRow:
        return LeaderboardRow(model=model, family=family, variant=family, d_dict=32, seed=0,
                              matched_sparsity=matched, l0=l0, ev=ev)

    payload = pareto_payload([row("stsae-full-K32-s0", "stsae", False, 8.0, 0.9),
                              row("pca-n32", "pca", False, 32.0, 0.99), row("pca-n32", "pca", True, 8.0, 0.7)])
    assert [(p["model"], p["on_front"]) for p in payload["points"]] == [("stsae-full-K32-s0", True),
                                                                        ("pca-n32", False)]
    assert payload["front"] == ["stsae-full-K32-s0"]
