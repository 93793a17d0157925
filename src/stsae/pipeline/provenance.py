"""Identity of what a stage consumed and produced, so "up to date" means the bytes, not just the config.

A stage's fingerprint hashes its declared config slice, the identity of its external inputs (a file:
sha256, cached by path + size + mtime_ns; a directory: a listing of every file with size + mtime_ns),
its upstream stages' fingerprints and its code (`code_identity`). Its stage.json also records the
digest of each upstream stage's outputs, so any rerun of an upstream stage that changes a byte or a
timestamp of its outputs makes everything downstream stale.

Outputs are identified by size, mtime_ns and a sampled content hash (first and last MiB plus evenly
spaced 64 KiB blocks): reading about 4 MiB per file keeps the freshness check of a 5 GB windows.npy in
milliseconds, while size and mtime catch the edits the sampling would miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from stsae.utils import io

_EDGE = 1 << 20
_BLOCK = 1 << 16
_BLOCKS = 32
_TEMP_MARKERS = (io.TEMP_MARK, ".partial")

FileIdentity = dict[str, Any]


def digest(payload: Any) -> str:
    """16 hex digits of the sha256 of `payload` as canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fast_hash(path: Path, size: int) -> str:
    """sha256 of the size, the first and last MiB and `_BLOCKS` evenly spaced blocks of `path`."""
    sha = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= 2 * _EDGE + _BLOCKS * _BLOCK:
            sha.update(handle.read())
            return sha.hexdigest()
        sha.update(handle.read(_EDGE))
        stride = (size - 2 * _EDGE) // (_BLOCKS + 1)
        for i in range(1, _BLOCKS + 1):
            handle.seek(_EDGE + i * stride)
            sha.update(handle.read(_BLOCK))
        handle.seek(size - _EDGE)
        sha.update(handle.read(_EDGE))
    return sha.hexdigest()


def file_identity(path: Path) -> FileIdentity:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": fast_hash(path, stat.st_size)}


def snapshot(root: Path, files: list[Path]) -> dict[str, FileIdentity]:
    """Identity of each output file, keyed by its path relative to the run directory."""
    return {path.relative_to(root).as_posix(): file_identity(path) for path in files}


def changed_files(root: Path, recorded: dict[str, FileIdentity]) -> list[str]:
    """Recorded outputs that vanished or whose size, mtime_ns or sampled content changed."""
    changed = []
    for name, identity in recorded.items():
        path = root / name
        try:
            stat = path.stat()
        except FileNotFoundError:
            changed.append(name)
            continue
        if (stat.st_size, stat.st_mtime_ns) != (identity["size"], identity["mtime_ns"]) \
                or fast_hash(path, stat.st_size) != identity["hash"]:
            changed.append(name)
    return changed


def is_output_name(name: str) -> bool:
    """Hidden bookkeeping (resume state, progress), temp files and stage.json are not outputs."""
    return not name.startswith(".") and name != "stage.json" and not any(m in name for m in _TEMP_MARKERS)


def list_outputs(base: Path, skip_dirs: set[Path]) -> list[Path]:
    """Every output file under `base` (sorted), not descending into `skip_dirs` or hidden folders."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d not in skip_dirs)
        found += [here / name for name in sorted(filenames) if is_output_name(name)]
    return found


def cached_sha256(path: Path, cache: Path) -> str:
    """Full sha256 of `path`, remembered in the JSON `cache` under (path, size, mtime_ns).

    A published encoder checkpoint is hashed once, not on every `stsae run`; overwriting it at the same
    path changes its mtime (and usually size), which misses the cache and rehashes.
    """
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        entries: dict[str, str] = json.loads(cache.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        entries = {}
    if key not in entries:
        prefix = f"{path.resolve()}|"
        entries = {k: v for k, v in entries.items() if not k.startswith(prefix)}
        entries[key] = io.file_sha256(path)
        io.write_json(cache, entries)
    return entries[key]


def _listing_digest(root: Path) -> dict[str, Any]:
    """A directory's identity: count, total size and digest of every file's (path, size, mtime_ns)."""
    sha = hashlib.sha256()
    count = total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            stat = path.stat()
            sha.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count, total = count + 1, total + stat.st_size
    return {"dir": str(root), "files": count, "bytes": total, "listing": sha.hexdigest()[:16]}


def input_identity(value: Any, cache: Path) -> dict[str, Any] | None:
    """Identity of an external input named by a config value (None: not configured).

    A missing path is recorded as such rather than raised: the stage that needs it reports it in its own
    words, and a path that appears later changes the fingerprint.
    """
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        return {"file": str(path), "sha256": cached_sha256(path, cache)}
    if path.is_dir():
        return _listing_digest(path)
    return {"missing": str(path)}
