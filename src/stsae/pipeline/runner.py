"""Run stages in order, skipping those whose provenance is unchanged, recording each in the manifest.

The graph comes from the `CONTRACT` each stage module declares beside its `run` (imported here in
pipeline order). A stage is up to date when its `stage.json` holds the fingerprint computed now (see
`stsae.pipeline.provenance`), the output digests of its upstream stages are those it was built from, and
every output it recorded is still there, unchanged. `stage.json` is
deleted before a stage runs and written (atomically) only after it succeeds, so a killed stage is never
mistaken for a finished one; resumable stages keep their own progress files.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from stsae import __version__
from stsae.config import Config, config_to_yaml
from stsae.errors import StsaeError
from stsae.pipeline import provenance
from stsae.pipeline.code_identity import code_digest
from stsae.pipeline.contract import StageContext, StageContract, config_slice, restricted
from stsae.pipeline.lock import remove_orphaned_temp_files
from stsae.pipeline.manifest import static_facts, update_manifest
from stsae.rundir import RunDir
from stsae.stages import age, baselines, evaluate, extract, figures, ground, prepare, report, train
from stsae.utils import io
from stsae.utils.dist import is_main_process

log = logging.getLogger(__name__)

__all__ = ["STAGES", "STAGE_BY_NAME", "StageContext", "StageContract", "fingerprint", "run_stages"]

_MODULES = (prepare, extract, train, baselines, evaluate, age, ground, figures, report)
STAGES: tuple[StageContract, ...] = tuple(module.CONTRACT for module in _MODULES)
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}
StageEntry = Callable[[StageContext], None]
RECORD_WAIT_S = 6 * 3600.0  # longest a rank waits for rank 0's stage record (torchrun ends it if rank 0 fails)
_RUN: dict[str, StageEntry] = {module.CONTRACT.name: module.run for module in _MODULES}
_MODULE_NAME = {module.CONTRACT.name: module.__name__ for module in _MODULES}


def _entry(stage: StageContract) -> StageEntry:
    """The stage's `run` (one indirection, so tests can substitute a stage)."""
    return _RUN[stage.name]


def record_path(run_dir: RunDir, stage: StageContract) -> Path:
    return run_dir.root / stage.out_dir / "stage.json"


def read_record(run_dir: RunDir, stage: StageContract) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(run_dir, stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _upstream_field(run_dir: RunDir, stage: StageContract, key: str) -> dict[str, str | None]:
    records = {name: read_record(run_dir, STAGE_BY_NAME[name]) for name in stage.upstream}
    return {name: (record or {}).get(key) for name, record in records.items()}


def upstream_fingerprints(run_dir: RunDir, stage: StageContract) -> dict[str, str | None]:
    """The fingerprint each upstream stage last finished with (None: never finished)."""
    return _upstream_field(run_dir, stage, "fingerprint")


def upstream_outputs(run_dir: RunDir, stage: StageContract) -> dict[str, str | None]:
    """The digest of each upstream stage's recorded outputs (sizes, mtimes, sampled hashes)."""
    return _upstream_field(run_dir, stage, "outputs_digest")


def fingerprint(config: Config, run_dir: RunDir, stage: StageContract) -> str:
    """Declared config slice + external input identities + upstream fingerprints + package version + the
    digest of the stage's code (its module and every stsae module it imports: `code_identity`).

    Reproducible: the same config, inputs and code give the same fingerprints in any run directory, so a
    model can record the extract fingerprint it was trained on. Upstream *outputs* are checked separately
    (`stale_reason`), since their identity includes modification times.
    """
    inputs = {key: provenance.input_identity(config_slice(config, (key,))[key], run_dir.hash_cache)
              for key in stage.inputs}
    return provenance.digest({"version": __version__, "code": code_digest(_MODULE_NAME[stage.name]),
                              "reads": config_slice(config, stage.reads), "inputs": inputs,
                              "upstream": upstream_fingerprints(run_dir, stage)})


def output_files(run_dir: RunDir, stage: StageContract) -> list[Path]:
    """The stage's outputs: files under out_dir (minus scratch and other stages' folders) + extra outputs."""
    base = run_dir.root / stage.out_dir
    skip = {base / name for name in stage.scratch}
    skip |= {run_dir.root / other.out_dir for other in STAGES if other is not stage
             and (run_dir.root / other.out_dir).is_relative_to(base)}
    extra = [getattr(run_dir, name) for name in stage.extra_outputs]
    return provenance.list_outputs(base, skip) + [path for path in extra if path.is_file()]


def check_upstream_intact(run_dir: RunDir, stage: StageContract) -> None:
    """Refuse to run or skip a stage whose upstream outputs changed on disk since that stage finished.

    `stsae run` reruns the upstream stage first, so this only stops a single-stage command (e.g.
    `stsae train` after windows.npy was edited) from using, or vouching for, inputs nobody produced.
    `--force` overrides it: the stage then runs on the files as they are (and the next `stsae run`
    rebuilds the upstream stage and everything after it).
    """
    for name in stage.upstream:
        record = read_record(run_dir, STAGE_BY_NAME[name])
        changed = provenance.changed_files(run_dir.root, (record or {}).get("outputs", {}))
        if changed:
            raise StsaeError(f"{run_dir.root / changed[0]}: output of stage '{name}' changed since it ran; "
                             f"run `stsae {name}` (or `stsae run`) before `stsae {stage.name}`")


def stale_reason(run_dir: RunDir, stage: StageContract, fp: str) -> str | None:
    """Why the stage must run (None: it is up to date)."""
    record = read_record(run_dir, stage)
    if record is None:
        return "never finished"
    if record.get("fingerprint") != fp:
        return "config, code, external inputs or upstream fingerprints changed"
    rebuilt = [name for name, digest in upstream_outputs(run_dir, stage).items()
               if record.get("upstream_outputs", {}).get(name) != digest]
    if rebuilt:
        return f"outputs of upstream stage(s) {', '.join(rebuilt)} changed since it ran"
    changed = provenance.changed_files(run_dir.root, record.get("outputs", {}))
    if changed:
        return f"output(s) changed or missing: {', '.join(changed[:3])}"
    return None


def run_stage(base: StageContext, stage: StageContract, entry: StageEntry | None = None) -> bool:
    """Run one stage unless up to date; returns True if it ran. Writes stage.json only on success.

    entry: a partial run of the stage (e.g. `train --only`); it always runs and is never recorded
    complete, since it did only part of the stage's work.
    """
    run_dir, config = base.run_dir, base.config
    if not base.force:
        check_upstream_intact(run_dir, stage)
    fp = fingerprint(config, run_dir, stage)
    reason = "partial run" if entry is not None else "forced" if base.force else stale_reason(run_dir, stage, fp)
    if reason is None:
        log.info("stage %-9s up to date (fingerprint %s), skipped", stage.name, fp)
        return False
    record = record_path(run_dir, stage)
    record.unlink(missing_ok=True)
    record.parent.mkdir(parents=True, exist_ok=True)
    upstream = {name: key for name, key in upstream_fingerprints(run_dir, stage).items() if key is not None}
    ctx = StageContext(restricted(config, stage), run_dir, fp, base.force, upstream)
    started = datetime.now(timezone.utc).isoformat()
    t0 = time.perf_counter()
    log.info("stage %-9s running (%s)", stage.name, reason)
    (entry or _entry(stage))(ctx)
    seconds = time.perf_counter() - t0
    if not is_main_process() or entry is not None:
        return True
    _record_config(config, run_dir)
    outputs = provenance.snapshot(run_dir.root, output_files(run_dir, stage))
    finished = datetime.now(timezone.utc).isoformat()
    io.write_json(record, {"stage": stage.name, "fingerprint": fp, "started": started, "finished": finished,
                           "seconds": seconds, "upstream": upstream,
                           "upstream_outputs": upstream_outputs(run_dir, stage), "outputs": outputs,
                           "outputs_digest": provenance.digest(outputs)})
    update_manifest(run_dir.manifest, {"stages": {stage.name: {
        "started": started, "finished": finished, "seconds": round(seconds, 3), "fingerprint": fp}}})
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


def await_record(run_dir: RunDir, stage: StageContract, fp: str, timeout_s: float = RECORD_WAIT_S) -> None:
    """A torchrun rank other than 0 waits until rank 0 has recorded `stage` with fingerprint `fp`.

    Why: only rank 0 writes stage.json, after its own share (and, for prepare, the assembly) is done; a
    rank that went on at once would fingerprint the next stage on a missing or old upstream record and
    run it under another fingerprint than rank 0 (another resume key, models recorded as stale)."""
    deadline = time.monotonic() + timeout_s
    while (read_record(run_dir, stage) or {}).get("fingerprint") != fp:
        if time.monotonic() > deadline:
            raise StsaeError(f"{record_path(run_dir, stage)}: rank 0 did not record stage '{stage.name}' "
                             f"within {timeout_s:.0f} s")
        time.sleep(0.2)


def run_stages(ctx: StageContext, names: list[str], partial: Mapping[str, StageEntry] | None = None) -> list[str]:
    """Run the named stages in pipeline order; returns those that actually ran (on this rank).

    partial: stage name -> a partial run of that stage (see `run_stage`). Under torchrun, ranks other
    than 0 run only the `multi_rank` stages, each after rank 0 recorded the stages before it, and stop
    after the last of them.
    """
    prepare_run_dir(ctx.run_dir)
    partial = partial or {}
    if is_main_process():
        return [name for name in names if run_stage(ctx, STAGE_BY_NAME[name], partial.get(name))]
    stages = [STAGE_BY_NAME[name] for name in names]
    last_shared = max((i for i, stage in enumerate(stages) if stage.multi_rank), default=-1)
    ran = []
    for stage in stages[: last_shared + 1]:
        if stage.multi_rank and run_stage(ctx, stage, partial.get(stage.name)):
            ran.append(stage.name)
        if stage.name not in partial and stage is not stages[last_shared]:
            await_record(ctx.run_dir, stage, fingerprint(ctx.config, ctx.run_dir, stage))
    return ran
