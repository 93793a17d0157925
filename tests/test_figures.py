"""Figures render from a complete fake run; missing inputs mark figures unavailable instead of crashing."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from run_fixture import write_fake_run, write_fake_run_with_figures
from stsae.errors import InputDataError
from stsae.eval.leaderboard import LeaderboardRow
from stsae.report.figures import (
    FigureInfo,
    draw_figures,
    plot_forest,
    read_concept_pulses,
    read_figure_index,
)
from stsae.rundir import RunDir
from stsae.utils.io import TEMP_MARK

EXPECTED = {"pareto", "ablations", "k_sweep", "seed_stability", "age_scatter", "delta_age_groups", "forest",
            "concept_17", "concept_3", "concept_250", "example_windows", "qc_rejections"}


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, list[FigureInfo]]:
    base = tmp_path_factory.mktemp("figures")
    run_dir = write_fake_run_with_figures(base / "run", base)
    return run_dir, read_figure_index(run_dir)


def test_every_expected_figure_is_available(drawn: tuple[RunDir, list[FigureInfo]]) -> None:
    _, infos = drawn
    assert {info.name for info in infos if info.available} >= EXPECTED


def test_available_figures_have_decodable_png_and_svg(drawn: tuple[RunDir, list[FigureInfo]]) -> None:
    run_dir, infos = drawn
    for info in infos:
        if not info.available:
            continue
        png, svg = run_dir.figures_dir / f"{info.name}.png", run_dir.figures_dir / f"{info.name}.svg"
        image = mpimg.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, info.name
        assert np.ptp(image) > 0, f"{info.name}.png is blank"
        assert svg.stat().st_size > 0 and svg.read_text().lstrip().startswith("<?xml"), info.name


def test_no_temporary_files_are_left_behind(drawn: tuple[RunDir, list[FigureInfo]]) -> None:
    run_dir, _ = drawn
    assert not [p.name for p in run_dir.figures_dir.iterdir() if TEMP_MARK in p.name]


def test_stability_figure_says_it_shows_means(drawn: tuple[RunDir, list[FigureInfo]]) -> None:
    _, infos = drawn
    stability = next(info for info in infos if info.name == "seed_stability")
    assert "means are shown" in stability.note


def test_missing_leaderboard_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    run_dir.leaderboard.unlink()
    with pytest.raises(InputDataError, match=r"leaderboard\.json"):
        draw_figures(run_dir)


def test_forest_with_every_association_skipped_is_unavailable(tmp_path: Path) -> None:
    skipped = {"htn": {"skipped": "too few cases"}, "t2d": {"skipped": "too few cases"}}
    info = plot_forest({"associations": {"concepts": skipped}}, tmp_path)
    assert not info.available
    assert info.note
    assert list(tmp_path.iterdir()) == []


def test_corrupt_concept_pulses_name_the_file_and_array(tmp_path: Path) -> None:
    path = tmp_path / "concept_pulses.npz"
    np.savez(path, concepts=np.arange(2), high_mean=np.zeros((2, 5)), high_lo=np.zeros((3, 5)),
             high_hi=np.zeros((2, 5)), low_mean=np.zeros((2, 5)), low_lo=np.zeros((2, 5)),
             low_hi=np.zeros((2, 5)))
    with pytest.raises(InputDataError, match=r"concept_pulses.npz: 'high_lo'"):
        read_concept_pulses(path)


def test_malformed_figure_index_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.figures_dir.mkdir()
    (run_dir.figures_dir / "index.json").write_text(json.dumps({"figures": [{"name": "x"}]}))
    with pytest.raises(InputDataError, match=r"index\.json"):
        read_figure_index(run_dir)


def test_run_without_optional_inputs_marks_figures_unavailable(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    run_dir.leaderboard.write_text(json.dumps({"schema_version": 2, "rows": []}))
    for path in (*run_dir.aging_dir.iterdir(), *run_dir.grounding_dir.iterdir(), run_dir.windows):
        path.unlink()
    infos = draw_figures(run_dir)
    assert infos and all(not info.available and info.note for info in infos)


def test_k_sweep_and_main_k_follow_the_row_evaluate_marked_main() -> None:
    """train.seeds: [1, 0] makes seed 1 the main model: the figures take its seed and K, not the lowest."""
    from stsae.report import figures

    def row(seed: int, k: int, is_main: bool) -> LeaderboardRow:
        return LeaderboardRow(model=f"stsae-full-K{k}-s{seed}", family="stsae", variant="full", d_dict=k, seed=seed,
                              is_main=is_main)

    rows = [row(0, 64, False), row(1, 64, True), row(1, 128, False), row(0, 32, False)]
    assert figures._main_seed(rows) == 1
    assert figures.main_dictionary_size(rows) == 64
