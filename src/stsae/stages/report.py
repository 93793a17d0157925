"""report stage: write the self-contained report.html from the run directory's files."""

from __future__ import annotations

from stsae.pipeline.contract import StageContext, StageContract
from stsae.report.html import write_report

CONTRACT = StageContract(
    name="report", help="Write the self-contained report.html.",
    reads=("report",), upstream=("figures",), out_dir="report", extra_outputs=("report_html",))


def run(ctx: StageContext) -> None:
    """Render report.html (title from `report.title`) and record its path in the manifest."""
    path = write_report(ctx.run_dir, ctx.config.report.title)
    ctx.record("report", {"path": str(path.relative_to(ctx.run_dir.root))})
