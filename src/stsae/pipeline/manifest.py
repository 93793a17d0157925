"""manifest.json: versions, seed, git commit, accelerator (GPU name, CUDA and driver versions; None on a CPU
machine), encoder weights identity and per-stage times."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from stsae import __version__
from stsae.config import Config
from stsae.utils import io
from stsae.utils.device import accelerator_facts

_TRACKED_PACKAGES = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "statsmodels", "h5py", "wfdb",
                     "safetensors", "pydantic", "neurokit2", "matplotlib")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"stsae": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def static_facts(config: Config) -> dict[str, Any]:
    """Facts every command records: identity of the run and of the software and hardware it ran on (each
    stage adds the device it actually computed on, see stsae.utils.device.device_facts)."""
    return {"run_name": config.run.name, "seed": config.run.seed, "data_source": config.data.source,
            "git_commit": _git_commit(), "versions": _versions(), "accelerator": accelerator_facts()}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def update_manifest(path: Path, update: dict[str, Any]) -> None:
    """Deep-merge `update` into manifest.json (atomic rewrite)."""
    current: dict[str, Any] = {}
    if path.is_file():
        try:
            current = json.loads(path.read_text())
        except json.JSONDecodeError:
            current = {}
    io.write_json(path, _merge(current, update))


def read_manifest(path: Path) -> dict[str, Any]:
    return io.read_json(path)
