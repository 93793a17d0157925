"""report stage: write the self-contained report.html from the run directory's files."""

from __future__ import annotations

from stsae.pipeline.contract import StageContext, StageContract
from stsae.report.dashboard import build_dashboard
from stsae.report.html import write_report

CONTRACT = StageContract(
    name="report", help="Write the self-contained report.html.",
    reads=("run.seed", "report", "train.d_dict", "train.seeds", "data.windowing.fs_target",
           "grounding.beat_samples", "aging.min_events"),
    upstream=("figures",), out_dir="report", extra_outputs=("report_html",))


def run(ctx: StageContext) -> None:
    """Render report.html (title from `report.title`) with the concept dashboard of the main model
    (`train` picks it, `data.windowing`, `grounding.beat_samples` and `aging.min_events` shape its cards)
    and record its path in the manifest."""
    dashboard = build_dashboard(ctx.run_dir, ctx.config)
    path = write_report(ctx.run_dir, ctx.config.report.title, dashboard)
    ctx.record("report", {"path": str(path.relative_to(ctx.run_dir.root))})
