"""Checks before a run touches its directory: a writable directory, ours, with no symlinked outputs.

The CLI calls `claim_run_dir` before logging opens run.log, the first file a run creates: a run
directory that is a file, lies below a file, is read-only, holds someone else's files, or has a symlink
where an output goes is refused there, in one line, and left exactly as it was.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

from stsae.errors import StsaeError
from stsae.pipeline.lock import open_lock_file, stage_folders
from stsae.rundir import RunDir
from stsae.utils import io

_FULL_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


class RunDirError(StsaeError):
    """The run directory cannot or must not be written; the message names it and what to do."""


def claim_run_dir(run_dir: RunDir, force: bool) -> None:
    """Refuse a run directory stsae must not write, else create it and its lock file.

    A directory is ours when it is new or empty, or holds manifest.json or the lock file; `force` (the
    CLI's --force) writes into any other directory. Creating the lock file is both the writability
    probe and the mark that makes the directory ours for the next run, even if this one fails early.
    """
    root = run_dir.root
    _make_directory(root)
    _require_ours(run_dir, force)
    refuse_symlinked_outputs(run_dir)
    try:
        os.close(open_lock_file(run_dir.lock))
    except OSError as exc:
        if exc.errno not in _READ_ONLY_ERRNOS:
            raise
        raise RunDirError(f"{root}: run directory is not writable ({exc.strerror}); make it writable or "
                          "choose another --run-dir") from None


def _file_in_the_way(root: Path) -> Path | None:
    """The nearest existing path at or above `root` if it is not a directory (a file, a dangling link)."""
    for path in (root, *root.parents):
        if path.is_dir():
            return None
        if os.path.lexists(path):
            return path
    return None


def _make_directory(root: Path) -> None:
    blocker = _file_in_the_way(root)
    if blocker == root:
        raise RunDirError(f"{root}: --run-dir is a file, not a directory; choose another path")
    if blocker is not None:
        raise RunDirError(f"{root}: --run-dir lies below {blocker}, which is a file, not a directory; "
                          "choose another path")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{root}: cannot create the run directory ({exc.strerror}); "
                          "choose another --run-dir") from None


def _require_ours(run_dir: RunDir, force: bool) -> None:
    if force or os.path.lexists(run_dir.manifest) or os.path.lexists(run_dir.lock):
        return
    entries = sorted(entry.name for entry in run_dir.root.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunDirError(f"{run_dir.root}: --run-dir is not empty ({shown}) and has no manifest.json, so it "
                          "is not an stsae run directory; choose a new or empty one, or pass --force to "
                          "write into it")


def _output_paths(run_dir: RunDir) -> Iterator[Path]:
    """Every file stsae writes or may write: its top-level files and all files in stage folders."""
    yield from (run_dir.manifest, run_dir.config_resolved, run_dir.log, run_dir.lock, run_dir.report_html)
    for folder in stage_folders(run_dir.root):
        for dirpath, _, filenames in os.walk(folder):
            yield from (Path(dirpath) / name for name in filenames)


def refuse_symlinked_outputs(run_dir: RunDir) -> None:
    """Raise UnsafePathError naming the first output that is a symlink to anything but a directory.

    A stage writes through a symlinked file (an extract resume reopens its `.partial` memmaps, logging
    appends to run.log), so one would let the run write outside its directory. A symlinked stage
    folder (embeddings/ moved to a bigger disk) stays allowed.
    """
    for path in _output_paths(run_dir):
        if not path.is_dir():
            io.refuse_symlink(path)


def environment_error_message(exc: OSError) -> str:
    """One line for an OSError the user fixes in the environment (full disk, read-only files)."""
    where = f" writing {exc.filename}" if exc.filename else ""
    fix = "free space and rerun" if exc.errno in _FULL_DISK_ERRNOS else "make it writable and rerun"
    return f"{exc.strerror}{where}; earlier outputs are intact, {fix}"
