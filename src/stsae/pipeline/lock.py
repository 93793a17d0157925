"""A run-directory lock so two `stsae` processes never write the same run at once."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from stsae.errors import StsaeError

log = logging.getLogger(__name__)


class RunLockedError(StsaeError, RuntimeError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(lock: Path) -> tuple[int, str] | None:
    try:
        pid_text, host = lock.read_text().split("\n", 1)
        return int(pid_text), host.strip()
    except (FileNotFoundError, ValueError):
        return None


def remove_orphaned_temp_files(root: Path) -> list[Path]:
    """Delete `<name>.tmp-<pid>` files under root whose writing process on this host is gone.

    A process killed with SIGKILL never runs `stsae.utils.io.atomic_path`'s cleanup, so its temp file
    stays. Nothing reads it (final names appear only by rename), but it wastes disk and keeps directories
    such as models/checkpoints/ from being removed. Temp files of live processes (another torchrun rank
    mid-write) are left alone. Returns the files removed.
    """
    removed = []
    for path in root.rglob("*.tmp-*"):
        pid_text = path.name.rpartition(".tmp-")[2]
        if path.is_file() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temp file(s) left by killed runs, e.g. %s", len(removed), removed[0])
    return removed


@contextlib.contextmanager
def run_lock(lock: Path) -> Iterator[None]:
    """Hold `lock` (O_EXCL create) for the block; a lock left by a dead process is cleared."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()}\n{socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder and holder[1] == socket.gethostname() and _pid_alive(holder[0]):
                raise RunLockedError(
                    f"{lock.parent}: run directory is in use by process {holder[0]} (lock {lock}); "
                    "wait for it to finish or choose another --run-dir"
                ) from None
            log.warning("clearing stale lock %s left by a process that is gone (%s)", lock, holder)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(me)
        break
    else:
        raise RunLockedError(f"{lock}: could not take the run lock")
    try:
        yield
    finally:
        if lock.exists() and lock.read_text() == me:
            lock.unlink()
