"""Atomic file writes: a killed process never leaves a half-written file a later stage could trust.

Every file the pipeline writes goes through here: write to `<name>.tmp-<pid>` in the same directory,
fsync, then `os.replace` onto the final name (atomic on POSIX), then fsync the directory.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from stsae.errors import InputDataError


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it onto `path`.

    On any exception the temporary file is removed and `path` is left exactly as it was.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists():
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
