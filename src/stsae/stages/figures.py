"""figures stage: draw every report figure (PNG + SVG) and index them in figures/index.json."""

from __future__ import annotations

import logging

from stsae.pipeline.contract import StageContext, StageContract
from stsae.report.figures import draw_figures, write_figure_index

log = logging.getLogger(__name__)


CONTRACT = StageContract(
    name="figures", help="Draw every figure (PNG + SVG).",
    reads=(), upstream=("evaluate", "age", "ground"), out_dir="figures")


def run(ctx: StageContext) -> None:
    """Draw the figures from eval/, aging/, grounding/ and windows/; missing optional inputs are noted."""
    infos = draw_figures(ctx.run_dir)
    write_figure_index(ctx.run_dir, infos)
    missing = [info.name for info in infos if not info.available]
    log.info("drew %d figure(s) into %s", len(infos) - len(missing), ctx.run_dir.figures_dir)
    if missing:
        log.warning("figures not available: %s", ", ".join(missing))
