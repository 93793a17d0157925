"""report.html: self-contained, honest about random encoder weights, readable when pieces are missing."""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from run_fixture import write_fake_run_with_figures
from stsae.config import Config
from stsae.errors import InputDataError
from stsae.pipeline.runner import StageContext
from stsae.report.figures import ev_axis_bottom, plot_pareto, read_figure_index, spread_positions
from stsae.report.headline import RANDOM_WARNING, headline_lines
from stsae.report.html import DASHBOARD_JS, write_report
from stsae.report.scorecard import leaderboard_rows
from stsae.rundir import RunDir
from stsae.stages import report as report_stage
from stsae.utils import io

TITLE = "Test report"


class _Attributes(HTMLParser):
    """Collects (tag, attribute, value) for every attribute and the CSP meta content."""

    def __init__(self) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs += [(tag, name, value or "") for name, value in attrs]


def _attributes(html: str) -> list[tuple[str, str, str]]:
    parser = _Attributes()
    parser.feed(html)
    return parser.attrs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    base = tmp_path_factory.mktemp("report")
    runs = {"random": write_fake_run_with_figures(base / "random", base, encoder_sha256="RANDOM"),
            "hex": write_fake_run_with_figures(base / "hex", base)}
    for run_dir in runs.values():
        write_report(run_dir, TITLE)
    return runs


def test_random_encoder_weights_show_the_red_banner(runs: dict[str, RunDir]) -> None:
    html = runs["random"].report_html.read_text()
    assert 'id="random-encoder-banner"' in html
    assert RANDOM_WARNING in html


def test_published_weights_show_no_banner_and_their_sha256(runs: dict[str, RunDir]) -> None:
    html = runs["hex"].report_html.read_text()
    assert "random-encoder-banner" not in html
    assert RANDOM_WARNING not in html
    assert "3f" * 32 in html


def test_no_src_or_href_points_to_the_network(runs: dict[str, RunDir]) -> None:
    html = runs["random"].report_html.read_text()
    links = [(tag, name, value) for tag, name, value in _attributes(html) if name in ("src", "href")]
    assert links
    assert not [v for _, _, v in links if re.match(r"\s*(https?:)?//", v, re.IGNORECASE)]
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", html, re.IGNORECASE)


def test_every_available_figure_is_embedded_as_a_png_data_uri(runs: dict[str, RunDir]) -> None:
    run_dir = runs["random"]
    attrs = _attributes(run_dir.report_html.read_text())
    sources = [v for tag, name, v in attrs if (tag, name) == ("img", "src")]
    available = [info for info in read_figure_index(run_dir) if info.available]
    assert len(sources) == len(available)
    assert all(src.startswith("data:image/png;base64,") for src in sources)


def test_content_security_policy_forbids_requests_and_allows_only_the_dashboard_script(
        runs: dict[str, RunDir]) -> None:
    html = runs["random"].report_html.read_text()
    csp = [v for tag, name, v in _attributes(html) if tag == "meta" and name == "content" and "default-src" in v]
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    assert scripts == [DASHBOARD_JS]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert csp == [f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
                   "base-uri 'none'; form-action 'none'"]


def test_scorecard_misses_are_marked(runs: dict[str, RunDir]) -> None:
    html = runs["random"].report_html.read_text()
    assert re.search(r'<tr class="miss"><td>QC sensitivity', html)
    assert "≥ 0.95" in html


def test_unavailable_figure_is_reported_not_available(tmp_path: Path) -> None:
    run_dir = write_fake_run_with_figures(tmp_path / "run", tmp_path)
    index = io.read_json(run_dir.figure_index)
    index["figures"].append({"name": "extra", "section": "data", "title": "Extra figure", "caption": "",
                             "available": False, "note": "no input"})
    io.write_json(run_dir.figure_index, index)
    html = write_report(run_dir, TITLE).read_text()
    assert "Extra figure</b> — not available: no input" in html


def test_missing_associations_show_not_available(tmp_path: Path) -> None:
    run_dir = write_fake_run_with_figures(tmp_path / "run", tmp_path)
    (run_dir.aging_dir / "associations.json").unlink()
    html = write_report(run_dir, TITLE).read_text()
    assert "Age results not available" in html


def test_missing_figure_index_is_an_error_naming_the_file(tmp_path: Path) -> None:
    run_dir = write_fake_run_with_figures(tmp_path / "run", tmp_path)
    (run_dir.figures_dir / "index.json").unlink()
    with pytest.raises(InputDataError, match=r"figures/index.json: missing"):
        write_report(run_dir, TITLE)


def test_report_stage_writes_report_and_records_it(tmp_path: Path) -> None:
    run_dir = write_fake_run_with_figures(tmp_path / "run", tmp_path)
    config = Config()
    config.report.title = "Stage title"
    report_stage.run(StageContext(config, run_dir, "fingerprint"))
    html = run_dir.report_html.read_text()
    assert "<title>Stage title</title>" in html
    assert "Concept dashboard not available: " in html and "stsae-full-K1024-s0.safetensors" in html
    assert io.read_json(run_dir.manifest)["report"] == {"path": "report.html"}


def test_headline_lines_warn_about_random_weights(runs: dict[str, RunDir]) -> None:
    lines = headline_lines(runs["random"])
    assert lines[0] == f"Report: {runs['random'].report_html}"
    assert any(RANDOM_WARNING in line for line in lines)
    assert "Planted-truth scorecard: 16/19 checks passed" in lines


def test_headline_lines_have_no_warning_for_published_weights(runs: dict[str, RunDir]) -> None:
    lines = headline_lines(runs["hex"])
    assert not any("WARNING" in line for line in lines)
    assert any(line.startswith("Full ST-SAE (stsae-full-K1024-s0): EV 0.9") for line in lines)


def test_headline_lines_survive_a_run_without_results(tmp_path: Path) -> None:
    lines = headline_lines(RunDir(tmp_path))
    assert lines[0] == "Report: not written (run `stsae report`)"
    assert "Age (test): MAE not available, r not available" in lines


def test_pareto_axis_clips_a_far_outlier_and_leaves_normal_spreads_alone() -> None:
    evs = [0.95, 0.94, 0.93, 0.9, 0.82, 0.78, 0.7, 0.62, -1.9]
    bottom = ev_axis_bottom(evs)
    assert bottom is not None and 0.5 < bottom < 0.62
    assert ev_axis_bottom([0.95, 0.9, 0.8, 0.7, 0.6, 0.5]) is None


def test_pareto_marks_off_scale_models_in_its_note(tmp_path: Path) -> None:
    run_dir = write_fake_run_with_figures(tmp_path / "run", tmp_path)
    rows = leaderboard_rows(run_dir)
    outlier = next(r for r in rows if r.family == "pca" and r.matched_sparsity)
    outlier.ev = -1.9
    info = plot_pareto(rows, io.read_json(run_dir.pareto), tmp_path / "fig")
    assert info.available and "1 model(s) below the axis" in info.note
    assert (tmp_path / "fig" / "pareto.png").is_file()


def test_spread_labels_keep_order_and_a_minimum_gap() -> None:
    values = [0.50, 0.51, 0.30, 0.505]
    placed = spread_positions(values, 0.05)
    assert np.argsort(placed).tolist() == np.argsort(values, kind="stable").tolist()
    assert np.diff(np.sort(placed)).min() >= 0.05 - 1e-12
    assert placed[2] == pytest.approx(0.30)


def test_every_leaderboard_column_has_its_one_line_definition_in_the_report(runs: dict[str, RunDir]) -> None:
    from stsae.report.html import LEADERBOARD_COLUMNS

    text = html_lib.unescape(runs["random"].report_html.read_text())
    for _, label, _, definition in LEADERBOARD_COLUMNS:
        assert f"<dt>{label}</dt><dd>{definition}</dd>" in text
