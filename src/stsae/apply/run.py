"""`stsae apply` / `stsae transfer` end to end: check B against A, prepare and extract B through the
runner, apply A's frozen models, write applied/ (and transfer.json), record `applied_from`, write B's report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stsae.apply.cohort import apply_to_cohort, write_applied
from stsae.apply.layout import AppliedDir
from stsae.apply.report import write_applied_report
from stsae.apply.source import SourceRun, check_compatible, load_frozen_models, read_source
from stsae.apply.transfer import transfer_evaluation
from stsae.config import Config
from stsae.errors import StsaeError
from stsae.pipeline.manifest import update_manifest
from stsae.pipeline.runner import StageContext, run_stages
from stsae.rundir import RunDir
from stsae.utils import io

log = logging.getLogger(__name__)

TARGET_STAGES = ["prepare", "extract"]


def checked_source(source_root: Path, target: Config, target_dir: RunDir) -> SourceRun:
    """Run A, refused before anything is written when `target` would embed B differently, or when B's run
    directory holds trained models (a run of its own, A itself included: its report would be replaced)."""
    if target_dir.models_dir.exists():
        raise StsaeError(f"--run-dir {target_dir.root}: holds trained models ({target_dir.models_dir.name}/); "
                         "apply a run into a new run directory")
    source = read_source(source_root)
    check_compatible(source, target)
    return source


def apply_run(ctx: StageContext, source: SourceRun, *, transfer: bool) -> dict[str, Any]:
    """Prepare + extract B (skipped when fresh), apply A's models, optionally evaluate transfer.

    Returns the manifest fact `applied_from`.
    """
    run_stages(ctx, TARGET_STAGES)
    frozen = load_frozen_models(source)
    out = AppliedDir(ctx.run_dir)
    cohort = apply_to_cohort(ctx.run_dir, frozen, ctx.config.aging.min_events)
    associations = write_applied(out, cohort)
    applied_from = {"run": str(source.run_dir.root.resolve()), "main_model": frozen.concept_model.info.name,
                    "age_model_sha256": frozen.age_model_sha256}
    update_manifest(ctx.run_dir.manifest, {"applied_from": applied_from})
    result = None
    if transfer:
        result = transfer_evaluation(source, frozen, cohort, ctx.config.aging, ctx.config.run.seed)
        io.write_json(out.transfer, result)
    metrics = associations["metrics"]
    log.info("applied %s to %d patients: MAE %s y", applied_from["main_model"], metrics["n"], metrics["mae"])
    write_applied_report(out, ctx.config.report.title, applied_from, associations, result)
    return applied_from
