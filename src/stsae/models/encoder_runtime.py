"""How PaPaGei-S runs fast on CPU: a channels-last inference path, precision and thread choice.

oneDNN convolutions run faster on channels-last 2-D tensors ([B, C, 1, L]) than on plain Conv1d input,
so the encoder is rebuilt on that layout; each BatchNorm that directly follows a convolution is folded
into it (free, so kept). bf16 autocast pays only on CPUs with native bf16 (AVX512-BF16/AMX); elsewhere
oneDNN emulates it and it is several times slower than fp32, so `precision: auto` picks bf16 only where
it is native *and* the embedding stays within the cosine bound of fp32 on a calibration batch.

torch.compile with Inductor *freezing* (weights become constants, so oneDNN convolutions get their
ReLU/add epilogues fused and the elementwise passes vanish) beats the channels-last path but costs
tens of seconds of compilation, so `extract.compile: auto` uses it only when a process has enough
windows to encode for the compile to pay back several times. A compiled graph is specialised to one
batch shape, so the last short batch is zero-padded to full size rather than triggering a second compile.
The measured speeds and compile times are in README.md ("Performance", benchmarks/bench_extract.py).

On CUDA the same FastEmbedder runs through cuDNN (channels-last suits its NHWC kernels and bf16 tensor
cores); bf16 autocast is chosen by `auto` where the GPU supports it, under the same cosine bound, and the
batch size comes from the GPU's free memory (`cuda_batch_size`). Not yet measured on a GPU:
benchmarks/bench_gpu.py and scripts/gpu_check.sh are the prepared measurements.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stsae.errors import StsaeError
from stsae.models.papagei import (
    BasicBlock,
    Precision,
    ResNet1DMoE,
    embed_batches,
    same_padding,
)
from stsae.utils.device import CPU

log = logging.getLogger(__name__)

MIN_BF16_COSINE = 0.999
CL = torch.channels_last


def _bn_scale_shift(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _bn(x: torch.Tensor, bn: nn.BatchNorm1d) -> torch.Tensor:
    """Eval-mode BatchNorm over dim 1 of a 4-D [B, C, 1, L] tensor (nn.BatchNorm1d rejects 4-D)."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


class _Conv(nn.Module):
    """A 'same'-padded Conv1d recast as a channels-last Conv2d, optionally with a BatchNorm folded in."""

    def __init__(self, conv: nn.Conv1d, stride: int, bn: nn.BatchNorm1d | None = None):
        super().__init__()
        weight, bias = conv.weight.detach(), conv.bias.detach()
        if bn is not None:
            scale, shift = _bn_scale_shift(bn)
            weight, bias = weight * scale[:, None, None], bias * scale + shift
        self.weight = nn.Parameter(weight.unsqueeze(2).contiguous(memory_format=CL), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.kernel_size = conv.kernel_size[0]
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = same_padding(x.shape[-1], self.kernel_size, self.stride)
        if left == right:
            return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride), padding=(0, left))
        x = F.pad(x, (left, right)).contiguous(memory_format=CL)
        return F.conv2d(x, self.weight, self.bias, stride=(1, self.stride))


class _Block(nn.Module):
    """Inference twin of `BasicBlock` (dropout is identity in eval; bn2 folded into conv1)."""

    def __init__(self, block: BasicBlock):
        super().__init__()
        self.pre_bn = None if block.is_first_block else block.bn1
        self.conv1 = _Conv(block.conv1.conv, block.stride, block.bn2)
        self.conv2 = _Conv(block.conv2.conv, 1)
        self.downsample = block.downsample
        self.stride = block.stride
        self.extra_channels = block.out_channels - block.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.pre_bn is None else F.relu(_bn(x, self.pre_bn))
        out = self.conv2(F.relu(self.conv1(out)))
        identity = x
        if self.downsample:
            left, right = same_padding(x.shape[-1], self.stride, 1)
            identity = F.max_pool2d(F.pad(x, (left, right)), (1, self.stride))
        if self.extra_channels:
            half = self.extra_channels // 2
            identity = F.pad(identity, (0, 0, 0, 0, half, self.extra_channels - half))
        return out + identity


class FastEmbedder(nn.Module):
    """Embedding-only PaPaGei-S for inference: x float32[B, 1, L] → embedding float32[B, 512].

    Same function as `model(x).embedding` in eval mode (differences at float rounding level), built
    from a loaded `ResNet1DMoE`; the MoE heads are not computed.
    """

    def __init__(self, model: ResNet1DMoE):
        super().__init__()
        model = model.eval()
        self.first_conv = _Conv(model.first_block_conv.conv, 1, model.first_block_bn)
        self.blocks = nn.ModuleList([_Block(block) for block in model.basicblock_list])
        self.final_bn = model.final_bn
        self.dense = model.dense
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.first_conv(x.unsqueeze(2).contiguous(memory_format=CL)))
        for block in self.blocks:
            out = block(out)
        pooled = F.relu(_bn(out, self.final_bn)).mean(dim=(2, 3))
        return self.dense(pooled)


COMPILE_MIN_ENCODES = 200_000
"""`extract.compile: auto` compiles when one process encodes at least this many windows (clean +
augmented): several times the measured break-even (README.md, "Performance"), so the compile always pays."""


class CompiledEmbedder(nn.Module):
    """`FastEmbedder` compiled by Inductor with freezing, for one fixed batch size.

    Shorter batches are zero-padded to `batch_size` and their extra rows dropped: rows never interact in
    the network (no batch statistics in eval mode), and one shape means one compilation.
    """

    def __init__(self, embedder: FastEmbedder, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.compiled = torch.compile(embedder, dynamic=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows > self.batch_size:
            raise ValueError(f"CompiledEmbedder got {rows} rows > its batch size {self.batch_size}")
        if rows < self.batch_size:
            x = F.pad(x, (0, 0, 0, 0, 0, self.batch_size - rows))
        # Imported here: loading Inductor costs resident memory that the eager path should not pay.
        from torch._inductor import config as inductor_config

        with inductor_config.patch(freezing=True):  # read when the first call compiles
            return self.compiled(x)[:rows]


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor would build its CPU kernels with ($CXX, else g++), or None if absent."""
    for name in (os.environ.get("CXX"), "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _missing_compile_tool(device: torch.device) -> str | None:
    """What Inductor lacks to compile for `device`: a C++ compiler (both), Triton (CUDA), else None."""
    if cxx_compiler() is None:
        return "a C++ compiler for torch.compile (none of $CXX, g++, clang++ found); install g++"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton for torch.compile on CUDA (not importable); install the CUDA torch wheels' triton"
    return None


def should_compile(requested: Literal["auto"] | bool, n_encodes: int, device: torch.device = CPU) -> bool:
    """Resolve `extract.compile` for a process that will encode `n_encodes` windows on `device`.

    Inductor needs a C++ compiler (and Triton on CUDA): `auto` falls back to the eager path (with a
    warning) without them, `true` is refused naming the key, rather than failing at the first batch of
    a long run.
    """
    if requested is False or (requested == "auto" and n_encodes < COMPILE_MIN_ENCODES):
        return False
    missing = _missing_compile_tool(device)
    if missing is not None:
        if requested is True:
            raise StsaeError(f"extract.compile: true needs {missing} or set extract.compile: auto")
        log.warning("extract.compile auto: no %s; encoding eagerly", missing.split(";")[0])
        return False
    return True


def native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX tiles), i.e. bf16 can be faster.

    Not oneDNN's `_is_mkldnn_bf16_supported`: that is also true on plain AVX-512, where oneDNN emulates
    bf16 and the encoder ran 1.85x slower than fp32 (309 vs 571 windows/s, session 12; the demo's
    extract stage took 108 s instead of ~55 s). torch.cpu's probes are private, so a torch without
    them counts as no native bf16 (fp32: never slower)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(probe()) for probe in probes if probe is not None)


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-row cosine similarity between two float32[N, D] arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(denom, 1e-30)))


def max_row_relative_error(reference: np.ndarray, approx: np.ndarray) -> float:
    """Largest per-row ‖approx − reference‖ / ‖reference‖ between two float32[N, D] arrays."""
    ref64 = reference.astype(np.float64)
    error = np.linalg.norm(approx.astype(np.float64) - ref64, axis=1)
    return float(np.max(error / np.maximum(np.linalg.norm(ref64, axis=1), 1e-30)))


class Bf16Parity(NamedTuple):
    """bf16 autocast against fp32 on the same windows: smallest row cosine and largest row relative error."""

    min_cosine: float
    max_rel_error: float


def bf16_parity(embedder: nn.Module, windows: np.ndarray, batch_size: int,
                device: torch.device = CPU) -> Bf16Parity:
    """Embed float32[n, 1250] windows in fp32 and in bf16 on `device` and compare them row by row."""
    reference = embed_batches(embedder, windows, batch_size, "fp32", device)
    approx = embed_batches(embedder, windows, batch_size, "bf16", device)
    return Bf16Parity(min_row_cosine(reference, approx), max_row_relative_error(reference, approx))


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 can beat fp32 here: a GPU with bf16 support, or a CPU with native bf16 (see module doc)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else native_bf16()


def choose_precision(requested: Literal["fp32", "bf16", "auto"], embedder: nn.Module,
                     calibration: np.ndarray, batch_size: int,
                     device: torch.device = CPU) -> tuple[Precision, float | None]:
    """Resolve `extract.precision`. Returns (precision, min cosine bf16 vs fp32 on calibration or None).

    auto: bf16 only where it is fast (else it is slower, see module doc) and its embeddings of the
    calibration windows (float32[n, 1250]) keep min row cosine >= 0.999 to fp32.
    """
    if requested != "auto":
        return requested, None
    if not bf16_is_fast(device):
        log.info("precision auto: fp32 (no native bf16 on %s; emulated bf16 is slower)", device)
        return "fp32", None
    parity = bf16_parity(embedder, calibration, batch_size, device)
    chosen: Precision = "bf16" if parity.min_cosine >= MIN_BF16_COSINE else "fp32"
    log.info("precision auto: bf16 vs fp32 min cosine %.6f, max relative error %.2e on %d calibration "
             "windows -> %s", parity.min_cosine, parity.max_rel_error, len(calibration), chosen)
    return chosen, parity.min_cosine


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def configure_threads(requested: int | None, world_size: int) -> int:
    """Set torch intra-op threads: `extract.num_threads`, else the cores this process may use / ranks."""
    if requested is None:
        requested = max(1, usable_cores() // world_size)
    torch.set_num_threads(requested)
    return requested


def resolve_augment_workers(requested: int | Literal["auto"], device: torch.device, world_size: int) -> int:
    """Resolve `extract.augment_workers`: a number is kept; auto is 0 on the CPU (the encoder uses the
    cores) and, on CUDA, this rank's share of the cores less one for the loader thread."""
    if requested != "auto":
        return requested
    return max(0, usable_cores() // world_size - 1) if device.type == "cuda" else 0


CPU_BATCH_SIZE = 64
"""`extract.batch_size: auto` on the CPU. `bench_extract.py` (512 windows, 5 interleaved rounds, fp32
channels-last path, 2-core AVX-512 box): 628 / 595 / 553 / 447 windows/s at batch 64 / 128 / 32 / 256 on two
threads, 324 / 305 / 315 / 260 on one; a batch of 256 windows' activations outgrows the 2 MiB L2."""
CALIBRATION_WINDOWS = 256
"""Windows `choose_precision` checks the bf16 cosine bound on, whatever the batch size."""
MAX_CUDA_BATCH = 65_536
CUDA_MEMORY_FRACTION = 0.5
"""Share of the free GPU memory a batch's activations may take; the rest is left to cuDNN workspaces
and the caching allocator's fragmentation."""


def batch_from_memory(free_bytes: int, bytes_per_window: float, fraction: float = CUDA_MEMORY_FRACTION,
                      cap: int = MAX_CUDA_BATCH) -> int:
    """Largest power of two b ≤ cap with b · bytes_per_window ≤ fraction · free_bytes (at least 1)."""
    fits = int(fraction * free_bytes / max(bytes_per_window, 1.0))
    if fits < 1:
        return 1
    return min(1 << (fits.bit_length() - 1), cap)


def cuda_batch_size(embedder: nn.Module, precision: Precision, device: torch.device, probe_rows: int = 256) -> int:
    """`extract.batch_size: auto` on CUDA: measure the peak memory one probe batch adds per window (at
    `precision`), then size the batch from the GPU's free memory (`batch_from_memory`)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    embed_batches(embedder, np.zeros((probe_rows, 1250), np.float32), probe_rows, precision, device)
    per_window = (torch.cuda.max_memory_allocated(device) - before) / probe_rows
    free, _ = torch.cuda.mem_get_info(device)
    batch = batch_from_memory(free, per_window)
    log.info("batch size auto: %.0f KiB of activations per window, %.1f GiB free on %s -> %d windows",
             per_window / 1024, free / 2**30, device, batch)
    return batch


def resolve_batch_size(requested: int | Literal["auto"], embedder: nn.Module, precision: Precision,
                       device: torch.device) -> int:
    """Resolve `extract.batch_size`: a number is kept; auto is 256 on the CPU, memory-sized on CUDA."""
    if requested != "auto":
        return requested
    return cuda_batch_size(embedder, precision, device) if device.type == "cuda" else CPU_BATCH_SIZE


Produce = Callable[[int], Sequence[np.ndarray]]
_DONE = object()


class ChunkPrefetcher:
    """A loader thread that prepares chunk k+1 while the device encodes chunk k (double buffering).

    `produce(chunk)` returns the chunk's views, arrays of n ≤ max_rows rows: `n_views` float32[n, row_len]
    (the clean windows read from the memmap and their augmentations), or one array per `layout` entry of
    that (row length, dtype) (e.g. the clean windows and the augmentations' draws); the thread copies them
    into one of two reusable buffers, pinned when `pin` (CUDA) so host-to-device copies run asynchronously.
    Iterating yields (chunk, views as tensors); a buffer is handed back to the thread when the consumer asks
    for the next chunk, by which time `embed_batches` has copied its results back (a device sync), so the
    buffer is free. An exception in the thread is re-raised in the consumer; leaving the `with` block early
    stops the thread. The views' values are unchanged, so CPU results equal the unthreaded loop byte for byte.
    """

    def __init__(self, produce: Produce, chunks: Sequence[int], n_views: int, max_rows: int, row_len: int,
                 pin: bool, layout: Sequence[tuple[int, torch.dtype]] | None = None):
        self._produce, self._chunks = produce, list(chunks)
        self._free: queue.Queue[list[torch.Tensor]] = queue.Queue()
        self._ready: queue.Queue[object] = queue.Queue()
        views = [(row_len, torch.float32)] * n_views if layout is None else layout
        for _ in range(2):
            self._free.put([torch.empty((max_rows, length), dtype=dtype, pin_memory=pin) for length, dtype in views])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load, name="extract-loader", daemon=True)

    def _load(self) -> None:
        try:
            for chunk in self._chunks:
                buffer = self._take_free()
                if buffer is None:
                    return
                views = self._produce(chunk)
                for slot, view in zip(buffer, views, strict=True):
                    slot[: len(view)].copy_(torch.from_numpy(view))
                self._ready.put((chunk, [slot[: len(view)] for slot, view in zip(buffer, views, strict=True)],
                                 buffer))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._ready.put(exc)
            return
        self._ready.put(_DONE)

    def _take_free(self) -> list[torch.Tensor] | None:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def __enter__(self) -> ChunkPrefetcher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def __iter__(self) -> Iterator[tuple[int, list[torch.Tensor]]]:
        while True:
            item = self._ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            chunk, views, buffer = item  # type: ignore[misc]
            yield chunk, views
            self._free.put(buffer)
