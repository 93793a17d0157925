"""Atomic file writes: a killed process never leaves a half-written file a later stage could trust.

Every file the pipeline writes goes through here: write to a temp file in the same directory, fsync,
then `os.replace` onto the final name (atomic on POSIX), then fsync the directory. Temp names carry an
unmistakable mark (`<name>.stsae-tmp-<host tag>-<pid>`) so the sweep of files left by killed runs
(`stsae.pipeline.lock.remove_orphaned_temp_files`) can never match a user's own `*.tmp-*` file, and
can tell a temp of a live process on another host (a torchrun rank) from an orphan of this host.
Outputs are never written through a symbolic link: a link in the run directory would let a stage
overwrite a file outside it, or publish a final output that is only a link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import socket
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from stsae.errors import InputDataError, StsaeError

TEMP_MARK = ".stsae-tmp-"
_TEMP_NAME = re.compile(r".+\.stsae-tmp-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)")
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(StsaeError):
    """An output path in the run directory is a symbolic link; writing it would leave the run directory."""


def host_tag() -> str:
    """8 hex digits naming this host in temp names (a pid means nothing on another host)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(final: Path) -> Path:
    """The temp file this process writes before renaming it onto `final`."""
    return final.with_name(f"{final.name}{TEMP_MARK}{host_tag()}-{os.getpid()}")


def temp_writer_pid(name: str) -> int | None:
    """The pid that wrote temp file `name` if it is one of ours from this host, else None."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None or match["host"] != host_tag():
        return None
    return int(match["pid"])


def refuse_symlink(path: Path) -> None:
    """Raise a one-line UnsafePathError if `path` is a symbolic link (dangling or not)."""
    if path.is_symlink():
        raise UnsafePathError(f"{path}: is a symbolic link; stsae writes only regular files inside the run "
                              "directory (remove the link and rerun)")


def create_new_file(path: Path, flags: int = os.O_WRONLY) -> int:
    """Create `path` afresh (unlinking what is there) and return an open descriptor.

    O_EXCL|O_NOFOLLOW: if anything slips a file or link in between the unlink and the create, the
    create fails instead of writing through it.
    """
    refuse_symlink(path)
    path.unlink(missing_ok=True)
    try:
        return os.open(path, flags | _NEW_FILE, 0o666)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ELOOP):
            raise UnsafePathError(f"{path}: appeared while stsae was creating it; is another program "
                                  "writing the run directory?") from None
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_regular_file(path: Path) -> None:
    """fsync `path`, refusing a symlink a caller may have renamed onto the temp name."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(f"{path}: became a symbolic link before it was published; refusing to "
                                  "publish a link as an output") from None
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a freshly created temporary path next to `path`; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left exactly as it was. A symlinked
    `path` is refused before anything is written.
    """
    final = Path(path)
    refuse_symlink(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    os.close(create_new_file(tmp))
    try:
        yield tmp
        _fsync_regular_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file for writing; it replaces `path` only if the block finishes."""
    with atomic_path(path) as tmp, open(tmp, mode) as handle:
        yield handle


def write_text(path: Path | str, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: Path | str, obj: Any) -> None:
    """Atomically write JSON (NaN written as null so browsers and strict parsers accept it)."""
    text = json.dumps(_nan_to_none(obj), indent=2, default=_json_default, allow_nan=False)
    write_text(path, text + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def read_json(path: Path | str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (run the stage that writes it first)") from None
    except json.JSONDecodeError as exc:
        raise InputDataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_parquet(path: Path | str, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read_parquet(path: Path | str, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the stage that writes it first)")
    return pd.read_parquet(path, columns=columns)


def save_npy(path: Path | str, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def open_memmap_rows(path: Path | str, n_cols: int | None = None) -> np.ndarray:
    """Open a float32 `.npy` read-only as a memmap and check its shape.

    A bad file raises InputDataError (a ValueError) naming it, so the CLI reports one line, not a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run the stage that writes it first)")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InputDataError(f"{path}: not a readable .npy array ({exc})") from None
    if array.dtype != np.float32 or array.ndim != 2:
        raise InputDataError(f"{path}: expected float32[N, D], got {array.dtype}{list(array.shape)}")
    if n_cols is not None and array.shape[1] != n_cols:
        raise InputDataError(f"{path}: expected {n_cols} columns, got {array.shape[1]}")
    return array


def release_mapped_pages(array: np.ndarray) -> None:
    """Drop this process's resident pages of a memmap (after a flush, for a writable one).

    Why: a stage streaming through a multi-GB memmap otherwise keeps every page it touched mapped, so
    its RSS grows to the file size (5 GB of windows.npy at 1M windows) even though the kernel could
    drop those pages. MADV_DONTNEED on a shared file mapping only unmaps: the data stays in the file
    and page cache, and the next access faults it back in. No-op for plain arrays / without madvise.
    """
    handle = getattr(array, "_mmap", None)  # np.memmap's mapping object
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _allocate(fd: int, size: int, path: Path) -> None:
    """Reserve `size` bytes of disk for `fd` now, or raise ENOSPC naming `path`.

    Filesystems without fallocate support (EOPNOTSUPP / EINVAL) fall back to a sparse file: the old
    behaviour, no worse than before.
    """
    allocate = getattr(os, "posix_fallocate", None)  # absent on macOS
    try:
        if allocate is not None:
            allocate(fd, 0, size)
            return
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    os.ftruncate(fd, size)


def preallocate_npy(path: Path | str, shape: tuple[int, ...], dtype: str = "<f4") -> None:
    """Create `path` as a zero-filled `.npy` of `shape` whose data blocks are allocated on disk now.

    Why: a sparse memmap gets its blocks only when a page is first written through the mapping, and
    on a full disk that write kills the process with SIGBUS and no message. Allocating up front turns
    a full disk into ENOSPC here, which the CLI reports in one line naming the file; the half-made
    file is removed. The file is created with O_EXCL|O_NOFOLLOW (a symlinked `path` is refused).
    """
    path = Path(path)
    header = _npy_header(shape, dtype)
    size = len(header) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    fd = create_new_file(path, os.O_RDWR)
    try:
        _allocate(fd, size, path)
        os.pwrite(fd, header, 0)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def file_sha256(path: Path) -> str:
    """Full sha256 of a file, read in 4 MiB blocks (encoder weights, model files: content identity)."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()
