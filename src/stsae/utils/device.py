"""Which torch device a stage computes on: `<section>.device` (auto | cpu | cuda | cuda:N), resolved once.

Why one resolver: a stage must fail before any work when the config asks for a GPU the machine lacks
(one line naming the key, not a CUDA stack trace mid-run), and under torchrun every rank must take its
own GPU (`cuda:LOCAL_RANK`), which is what torchrun's LOCAL_RANK is for. `auto` follows PaPaGei's own
examples: CUDA whenever it is available, else the CPU.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import torch

from stsae.errors import StsaeError
from stsae.utils.dist import local_rank

CPU = torch.device("cpu")


def resolve_device(spec: str, key: str) -> torch.device:
    """`spec` (auto | cpu | cuda | cuda:N, validated by the config) as a torch.device.

    auto: CUDA when available, else CPU. `cuda` (or auto on a CUDA machine) is `cuda:LOCAL_RANK` under
    torchrun, else `cuda:0`. A CUDA request without CUDA, or an index beyond the visible GPUs, raises a
    one-line StsaeError naming `key` (e.g. `extract.device`).
    """
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return CPU
    if not torch.cuda.is_available():
        raise StsaeError(f"{key}: {spec} requested but CUDA is not available here (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda}); set {key}: cpu or auto")
    index = int(spec.split(":")[1]) if ":" in spec else (local_rank() or 0)
    count = torch.cuda.device_count()
    if index >= count:
        origin = "LOCAL_RANK" if ":" not in spec else "index"
        raise StsaeError(f"{key}: cuda:{index} ({origin}) but only {count} CUDA device(s) are visible; "
                         f"set {key} to cuda:0..cuda:{count - 1} or run fewer ranks per host")
    return torch.device("cuda", index)


def _nvidia_smi(field: str) -> str | None:
    """One `nvidia-smi --query-gpu` field of the first GPU (e.g. driver_version '550.54.15'), or None
    where nvidia-smi is absent or fails. Asking it, unlike torch, creates no CUDA context."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def device_facts(device: torch.device) -> dict[str, Any]:
    """What the manifest records about the device a stage computed on: name, CUDA runtime, driver and
    compute capability (None on CPU)."""
    if device.type != "cuda":
        return {"device": str(device), "name": "cpu", "cuda": None, "driver": None, "capability": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"device": str(device), "name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
            "driver": _nvidia_smi("driver_version"), "capability": f"{major}.{minor}"}


def accelerator_facts() -> dict[str, Any]:
    """Run-level facts for manifest.json, recorded by every command, so without touching the GPU (no CUDA
    context for stages that never use it): whether CUDA is usable, how many GPUs, the first one's name,
    the CUDA runtime torch was built with and the driver (all None without CUDA)."""
    if not torch.cuda.is_available():
        return {"cuda_available": False, "cuda_devices": 0, "name": None, "cuda": None, "driver": None}
    return {"cuda_available": True, "cuda_devices": torch.cuda.device_count(), "name": _nvidia_smi("name"),
            "cuda": torch.version.cuda, "driver": _nvidia_smi("driver_version")}


@contextlib.contextmanager
def cuda_math(device: torch.device, fp32: bool) -> Iterator[None]:
    """On CUDA: deterministic cuDNN algorithms without autotuning, so a rerun or a resumed run writes the
    same bytes as on the CPU (autotuning may pick another kernel per process), and for fp32 no TF32
    convolutions, so "fp32" means IEEE fp32 as on the CPU; all restored on exit. Nothing changes on the
    CPU. benchmarks/bench_gpu.py measures what autotuning would gain."""
    if device.type != "cuda":
        yield
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic, cudnn.conv.fp32_precision
    cudnn.benchmark, cudnn.deterministic, cudnn.conv.fp32_precision = False, True, "ieee" if fp32 else "tf32"
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.conv.fp32_precision = saved
