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
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Literal

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


def should_compile(requested: Literal["auto"] | bool, n_encodes: int) -> bool:
    """Resolve `extract.compile` for a process that will encode `n_encodes` windows.

    Inductor needs a C++ compiler: `auto` falls back to the eager path (with a warning) without one,
    `true` is refused naming the key, rather than failing at the first batch of a long run.
    """
    if requested is False or (requested == "auto" and n_encodes < COMPILE_MIN_ENCODES):
        return False
    if cxx_compiler() is None:
        if requested is True:
            raise StsaeError("extract.compile: true needs a C++ compiler for torch.compile (none of $CXX, "
                             "g++, clang++ found); install g++ or set extract.compile: auto")
        log.warning("extract.compile auto: no C++ compiler for torch.compile; encoding eagerly (slower)")
        return False
    return True


def native_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16 or AMX), i.e. bf16 can be faster."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest per-row cosine similarity between two float32[N, D] arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    denom = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return float(np.min(np.sum(a64 * b64, axis=1) / np.maximum(denom, 1e-30)))


def choose_precision(requested: Literal["fp32", "bf16", "auto"], embedder: nn.Module,
                     calibration: np.ndarray, batch_size: int) -> tuple[Precision, float | None]:
    """Resolve `extract.precision`. Returns (precision, min cosine bf16 vs fp32 on calibration or None).

    auto: bf16 only where it is native (else it is slower, see module doc) and its embeddings of the
    calibration windows (float32[n, 1250]) keep min row cosine >= 0.999 to fp32.
    """
    if requested != "auto":
        return requested, None
    if not native_bf16():
        log.info("precision auto: fp32 (this CPU has no native bf16; emulated bf16 is slower)")
        return "fp32", None
    reference = embed_batches(embedder, calibration, batch_size, "fp32")
    cosine = min_row_cosine(reference, embed_batches(embedder, calibration, batch_size, "bf16"))
    chosen: Precision = "bf16" if cosine >= MIN_BF16_COSINE else "fp32"
    log.info("precision auto: bf16 vs fp32 min cosine %.6f on %d calibration windows -> %s",
             cosine, len(calibration), chosen)
    return chosen, cosine


def configure_threads(requested: int | None, world_size: int) -> int:
    """Set torch intra-op threads: `extract.num_threads`, else the cores this process may use / ranks."""
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        requested = max(1, cores // world_size)
    torch.set_num_threads(requested)
    return requested
