"""A run-directory lock so two `stsae` processes never write the same run at once.

The lock is `fcntl.flock` on an open descriptor of the lock file: the kernel releases it when the holder
exits, however it dies, so on one host there is no stale lock to guess about and no race between two
processes clearing one. The file is never unlinked (a new inode would let a third process lock it while
the old one is still held); its content only names the holder for messages. A holder named from
another host is the one case the kernel cannot settle (a filesystem whose flock is host-local): that
lock is broken only with an explicit `--break-lock`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stsae.errors import StsaeError
from stsae.utils import io

log = logging.getLogger(__name__)


class RunLockedError(StsaeError, RuntimeError):
    """Another process holds the run directory, or held it from another host."""


@dataclass(frozen=True)
class Holder:
    """Who wrote the lock file last: the process id and the host it ran on."""

    pid: int
    host: str

    def describe(self) -> str:
        here = self.host == socket.gethostname()
        return f"process {self.pid}" + ("" if here else f" on host {self.host}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(fd: int) -> Holder | None:
    """The holder named in the lock file, or None when it is empty or unreadable."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode())
        return Holder(int(data["pid"]), str(data["host"]))
    except (ValueError, KeyError, TypeError):
        return None


def _write_holder(fd: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)
    os.fsync(fd)


def open_lock_file(lock: Path) -> int:
    """Open (creating if needed) the lock file without following a symlink; returns the descriptor."""
    io.refuse_symlink(lock)
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link slipped in after the check above
            io.refuse_symlink(lock)
        raise OSError(exc.errno, exc.strerror, str(lock)) from None


def _take(fd: int, lock: Path, break_lock: bool) -> None:
    """Take the kernel lock, then settle a holder the kernel cannot vouch for (another host's)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        who = holder.describe() if holder else "another process"
        raise RunLockedError(f"{lock.parent}: run directory is in use by {who} (lock {lock}); "
                             "wait for it to finish or choose another --run-dir") from None
    holder = _read_holder(fd)
    if holder is None:
        return
    if holder.host != socket.gethostname():
        if not break_lock:
            raise RunLockedError(
                f"{lock.parent}: run directory was locked by {holder.describe()} (lock {lock}), which this "
                "host cannot check; if that run has ended, rerun with --break-lock")
        log.warning("--break-lock: taking lock %s from %s", lock, holder.describe())
    else:
        log.info("lock %s: its last holder, %s, has exited; taking it", lock, holder.describe())


@contextlib.contextmanager
def run_lock(lock: Path, break_lock: bool = False) -> Iterator[None]:
    """Hold `lock` for the block (flock); on exit the holder is erased and the kernel lock released."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = open_lock_file(lock)
    try:
        _take(fd, lock, break_lock)
        _write_holder(fd)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def stage_folders(root: Path) -> list[Path]:
    """Top-level folders the stages write (models/ holds baselines/ and checkpoints/)."""
    from stsae.pipeline.runner import STAGES  # the runner imports this module; its stage list comes later

    names = sorted({Path(stage.out_dir).parts[0] for stage in STAGES})
    return [root / name for name in names if (root / name).is_dir()]


def _our_temp_files(root: Path) -> Iterator[Path]:
    """Temp files named by `stsae.utils.io.temp_path` at the top of `root` and inside stage folders."""
    for entry in root.iterdir():
        if entry.is_file() and not entry.is_symlink():
            yield entry
    for folder in stage_folders(root):
        for dirpath, _, filenames in os.walk(folder):
            yield from (Path(dirpath) / name for name in filenames)


def remove_orphaned_temp_files(root: Path) -> list[Path]:
    """Delete this host's stsae temp files under root whose writing process is gone.

    A process killed with SIGKILL never runs `stsae.utils.io.atomic_path`'s cleanup, so its temp file
    stays. Nothing reads it (final names appear only by rename), but it wastes disk and keeps directories
    such as models/checkpoints/ from being removed. Only names `io.temp_path` makes are touched, only at
    the top of the run directory and inside stage folders, only of this host; temp files of live
    processes (another torchrun rank mid-write) are left alone. Returns the files removed.
    """
    removed = []
    for path in _our_temp_files(root):
        pid = io.temp_writer_pid(path.name)
        if pid is not None and not path.is_symlink() and not _pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temp file(s) left by killed runs, e.g. %s", len(removed), removed[0])
    return removed
