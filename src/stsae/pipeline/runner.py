"""Run stages in order, skipping those whose fingerprint is unchanged, recording each in the manifest.

A stage's `stage.json` is deleted before it runs and written (atomically) only after it succeeds, so a
killed stage is never mistaken for a finished one; resumable stages keep their own progress files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stsae import __version__
from stsae.config import Config, config_to_yaml
from stsae.errors import StsaeError
from stsae.pipeline.lock import remove_orphaned_temp_files
from stsae.pipeline.manifest import static_facts, update_manifest
from stsae.pipeline.rundir import RunDir
from stsae.pipeline.stages import STAGE_BY_NAME, STAGES, Stage
from stsae.utils import io
from stsae.utils.dist import is_main_process

log = logging.getLogger(__name__)


class StageNotImplementedError(StsaeError, RuntimeError):
    """The stage's module does not exist yet; the run must not pretend it ran."""


@dataclass
class StageContext:
    """What a stage function receives: the config, the run directory and its own fingerprint."""

    config: Config
    run_dir: RunDir
    fingerprint: str
    force: bool = False
    only: list[str] = field(default_factory=list)

    def record(self, key: str, value: Any) -> None:
        """Add a fact to manifest.json (e.g. encoder weights sha256 or RANDOM)."""
        update_manifest(self.run_dir.manifest, {key: value})


def _section_value(config: Config, dotted: str) -> Any:
    node: Any = config.model_dump(mode="json")
    for part in dotted.split("."):
        node = node[part]
    return node


def fingerprints(config: Config) -> dict[str, str]:
    """Fingerprint of every stage: its config sections + upstream fingerprints + package version."""
    result: dict[str, str] = {}
    for stage in STAGES:
        payload = {
            "version": __version__,
            "sections": {s: _section_value(config, s) for s in stage.sections},
            "upstream": {u: result[u] for u in stage.upstream},
        }
        result[stage.name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return result


def _record_path(run_dir: RunDir, stage: Stage) -> Path:
    return run_dir.root / stage.out_dir / "stage.json"


def _read_record(run_dir: RunDir, stage: Stage) -> dict[str, Any] | None:
    path = _record_path(run_dir, stage)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _upstream_runs(run_dir: RunDir, stage: Stage) -> dict[str, str | None]:
    """When each upstream stage last finished: a forced upstream rerun makes this stage stale too."""
    records = {name: _read_record(run_dir, STAGE_BY_NAME[name]) for name in stage.upstream}
    return {name: (record or {}).get("finished") for name, record in records.items()}


def is_fresh(run_dir: RunDir, stage: Stage, fingerprint: str) -> bool:
    """Fresh = finished with this fingerprint, after the upstream runs it was built from."""
    record = _read_record(run_dir, stage)
    if record is None:
        return False
    return record.get("fingerprint") == fingerprint and record.get("upstream_runs") == _upstream_runs(
        run_dir, stage
    )


def _load_entry(stage: Stage) -> Callable[[StageContext], None]:
    module_name, func_name = stage.entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise StageNotImplementedError(f"stage '{stage.name}' is not implemented yet") from None
        raise
    return getattr(module, func_name)


def run_stage(ctx_base: StageContext, stage: Stage) -> bool:
    """Run one stage unless fresh; returns True if it ran. Writes stage.json only on success."""
    run_dir = ctx_base.run_dir
    fingerprint = fingerprints(ctx_base.config)[stage.name]
    if not ctx_base.force and is_fresh(run_dir, stage, fingerprint):
        log.info("stage %-9s up to date (fingerprint %s), skipped", stage.name, fingerprint)
        return False
    entry = _load_entry(stage)
    record = _record_path(run_dir, stage)
    record.unlink(missing_ok=True)
    record.parent.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(ctx_base.config, run_dir, fingerprint, ctx_base.force, ctx_base.only)
    started = datetime.now(timezone.utc).isoformat()
    t0 = time.perf_counter()
    log.info("stage %-9s running", stage.name)
    entry(ctx)
    seconds = time.perf_counter() - t0
    finished = datetime.now(timezone.utc).isoformat()
    if not is_main_process() or ctx.only:
        # a filtered run (`train --only`) did part of the stage: never mark the whole stage complete
        return True
    _record_config(ctx.config, run_dir)
    io.write_json(record, {"stage": stage.name, "fingerprint": fingerprint, "started": started,
                           "finished": finished, "seconds": seconds,
                           "upstream_runs": _upstream_runs(run_dir, stage)})
    update_manifest(run_dir.manifest, {"stages": {stage.name: {
        "started": started, "finished": finished, "seconds": round(seconds, 3), "fingerprint": fingerprint}}})
    log.info("stage %-9s done in %.1f s", stage.name, seconds)
    return True


def prepare_run_dir(run_dir: RunDir) -> None:
    """Create the run directory and clear temp files a killed earlier run left behind."""
    run_dir.root.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        remove_orphaned_temp_files(run_dir.root)


def _record_config(config: Config, run_dir: RunDir) -> None:
    """Save the resolved config and the manifest's static facts (versions, seed, git commit).

    Written only after a stage succeeds, so a run that fails on bad input never leaves the run
    directory claiming a config its outputs were not produced with.
    """
    io.write_text(run_dir.config_resolved, config_to_yaml(config))
    update_manifest(run_dir.manifest, static_facts(config))


def run_stages(ctx: StageContext, names: list[str]) -> list[str]:
    """Run the named stages in pipeline order; returns those that actually ran."""
    prepare_run_dir(ctx.run_dir)
    ran = []
    for name in names:
        if run_stage(ctx, STAGE_BY_NAME[name]):
            ran.append(name)
    return ran
