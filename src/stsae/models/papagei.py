"""PaPaGei-S (Nokia Bell Labs' PPG foundation model) rebuilt natively so its published weights load.

The module tree mirrors upstream `models/resnet.py::ResNet1DMoE` exactly (same attribute names, same
order), so the published `papagei_s.pt` state_dict (294 keys, 5,785,612 parameters) loads with
`strict=True`; the code itself is our own. The embedding used downstream is the first forward output
(`dense(pooled)`, 512-d), as in upstream feature extraction (`output_idx=0`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stsae.config import EncoderSection
from stsae.errors import StsaeError
from stsae.utils import io
from stsae.utils.device import CPU, cuda_math
from stsae.utils.seeding import derive_seed

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 1250
EMBEDDING_DIM = 512
Precision = Literal["fp32", "bf16"]


def same_padding(length: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """TensorFlow-style 'same' padding: output length ceil(length / stride), extra pad on the right."""
    out_len = (length + stride - 1) // stride
    total = max(0, (out_len - 1) * stride + kernel_size - length)
    return total // 2, total - total // 2


class Conv1dSame(nn.Module):
    """Conv1d with 'same' padding; wraps `.conv` so state_dict keys read `<name>.conv.weight`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, same_padding(x.shape[-1], self.kernel_size, self.stride)))


def _max_pool_same(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Max pool (stride = kernel) after upstream's zero 'same' padding computed for stride 1.

    Upstream pads with zeros, not -inf, so a trailing negative sample can be replaced by 0; kept
    as is because the published weights were trained with it.
    """
    return F.max_pool1d(F.pad(x, same_padding(x.shape[-1], kernel_size, 1)), kernel_size)


class BasicBlock(nn.Module):
    """Pre-activation residual block: (BN → ReLU → Dropout →) conv → BN → ReLU → Dropout → conv + skip.

    The first block of the network skips its leading BN/ReLU/Dropout (they still exist, unused, so the
    state_dict matches upstream). When the block downsamples, the skip path is max-pooled; when it
    widens, the skip path is zero-padded symmetrically along channels.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int,
                 downsample: bool, is_first_block: bool):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.downsample = downsample
        self.stride = stride if downsample else 1
        self.is_first_block = is_first_block
        self.bn1 = nn.BatchNorm1d(in_channels)
        self.relu1 = nn.ReLU()
        self.do1 = nn.Dropout(p=0.5)
        self.conv1 = Conv1dSame(in_channels, out_channels, kernel_size, self.stride, groups)
        self.bn2 = nn.BatchNorm1d(out_channels)
        self.relu2 = nn.ReLU()
        self.do2 = nn.Dropout(p=0.5)
        self.conv2 = Conv1dSame(out_channels, out_channels, kernel_size, 1, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if not self.is_first_block:
            out = self.do1(self.relu1(self.bn1(out)))
        out = self.conv1(out)
        out = self.conv2(self.do2(self.relu2(self.bn2(out))))
        identity = _max_pool_same(x, self.stride) if self.downsample else x
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            identity = F.pad(identity, (0, 0, extra // 2, extra - extra // 2))
        return out + identity


class PaPaGeiOutput(NamedTuple):
    """Forward outputs. embedding: [B, 512]; head1, head2: [B, 1] MoE regressions; pooled: [B, 512]."""

    embedding: torch.Tensor
    head1: torch.Tensor
    head2: torch.Tensor
    pooled: torch.Tensor


def _expert(width: int, dropout: float | None) -> nn.Sequential:
    hidden = [nn.Linear(width, width // 2), nn.ReLU()]
    if dropout is not None:
        hidden.append(nn.Dropout(dropout))
    return nn.Sequential(*hidden, nn.Linear(width // 2, 1))


class ResNet1DMoE(nn.Module):
    """1-D ResNet with two mixture-of-experts regression heads (PaPaGei-S when built by `PaPaGeiS`).

    x: float32[B, in_channels, L] → PaPaGeiOutput. Blocks downsample (stride) on every odd index
    (`downsample_gap=2`) and double the channels every fourth block (`increasefilter_gap=4`).
    """

    def __init__(self, in_channels: int, base_filters: int, kernel_size: int, stride: int, groups: int,
                 n_block: int, n_classes: int, n_experts: int = 2, downsample_gap: int = 2,
                 increasefilter_gap: int = 4):
        super().__init__()
        self.first_block_conv = Conv1dSame(in_channels, base_filters, kernel_size, 1)
        self.first_block_bn = nn.BatchNorm1d(base_filters)
        self.first_block_relu = nn.ReLU()
        blocks = []
        width = base_filters
        for i in range(n_block):
            block_in = base_filters if i == 0 else base_filters * 2 ** ((i - 1) // increasefilter_gap)
            width = block_in * 2 if (i % increasefilter_gap == 0 and i != 0) else block_in
            blocks.append(BasicBlock(block_in, width, kernel_size, stride, groups,
                                     downsample=i % downsample_gap == 1, is_first_block=i == 0))
        self.basicblock_list = nn.ModuleList(blocks)
        self.final_bn = nn.BatchNorm1d(width)
        self.final_relu = nn.ReLU()
        self.dense = nn.Linear(width, n_classes)
        self.expert_layers_1 = nn.ModuleList([_expert(width, None) for _ in range(n_experts)])
        self.gating_network_1 = nn.Sequential(nn.Linear(width, n_experts), nn.Softmax(dim=1))
        self.expert_layers_2 = nn.ModuleList([_expert(width, 0.3) for _ in range(n_experts)])
        self.gating_network_2 = nn.Sequential(nn.Linear(width, n_experts), nn.Softmax(dim=1))

    @staticmethod
    def _mixture(experts: nn.ModuleList, gate: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(pooled) for expert in experts], dim=1)  # [B, E, 1]
        return (gate(pooled).unsqueeze(2) * outputs).sum(dim=1)  # [B, 1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float32[B, C, L] → pooled features float32[B, width] (backbone + final BN/ReLU + mean)."""
        out = self.first_block_relu(self.first_block_bn(self.first_block_conv(x)))
        for block in self.basicblock_list:
            out = block(out)
        return self.final_relu(self.final_bn(out)).mean(-1)

    def forward(self, x: torch.Tensor) -> PaPaGeiOutput:
        pooled = self.features(x)
        return PaPaGeiOutput(
            embedding=self.dense(pooled),
            head1=self._mixture(self.expert_layers_1, self.gating_network_1, pooled),
            head2=self._mixture(self.expert_layers_2, self.gating_network_2, pooled),
            pooled=pooled,
        )


def PaPaGeiS() -> ResNet1DMoE:
    """The PaPaGei-S architecture (5,785,612 parameters), randomly initialised, in eval mode."""
    model = ResNet1DMoE(in_channels=1, base_filters=32, kernel_size=3, stride=2, groups=1, n_block=18,
                        n_classes=EMBEDDING_DIM, n_experts=3)
    return model.eval()


def random_papagei_s(seed: int) -> ResNet1DMoE:
    """PaPaGei-S with a seeded random init (demo only); the global torch RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PaPaGeiS()


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise StsaeError(f"{path}: PaPaGei-S weights not found (set encoder.weights to papagei_s.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StsaeError(
            f"{path}: holds pickled objects other than tensors; refusing to load it ({reason})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise StsaeError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StsaeError(f"{path}: expected a state_dict of tensors, got {type(state).__name__}")
    return state


def load_papagei_s(path: Path | str) -> ResNet1DMoE:
    """Load published PaPaGei-S weights (`papagei_s.pt`) into `PaPaGeiS()`, strictly, in eval mode.

    Loads with `weights_only=True` so a checkpoint can never run code; a leading `module.` (saved from
    DistributedDataParallel) is stripped. Missing/unexpected keys, a wrong shape or a non-finite value
    raise StsaeError naming the file and the tensor.
    """
    path = Path(path)
    state = _read_state_dict(path)
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    model = PaPaGeiS()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise StsaeError(f"{path}: not a PaPaGei-S state_dict ({len(missing)} missing keys e.g. "
                         f"{missing[:2]}, {len(unexpected)} unexpected e.g. {unexpected[:2]})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise StsaeError(f"{path}: '{key}' has shape {list(tensor.shape)}, PaPaGei-S expects "
                             f"{list(expected[key].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise StsaeError(f"{path}: tensor '{key}' has {bad} NaN/inf values of {tensor.numel()}; refusing "
                             "weights that would make every embedding NaN")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_encoder(section: EncoderSection, seed: int) -> tuple[ResNet1DMoE, dict[str, str | None]]:
    """Apply the weights policy of `encoder.*`; returns (model in eval mode, manifest identity).

    Published weights when `encoder.weights` is set; otherwise a seeded random init, but only when
    `encoder.allow_random_weights` is true (demo), with a loud warning, because random-weight
    embeddings must never be mistaken for PaPaGei-S results. Identity: {"weights", "sha256"|"RANDOM"}.
    """
    if section.weights is not None:
        model = load_papagei_s(section.weights)
        return model, {"weights": str(section.weights), "sha256": io.file_sha256(Path(section.weights))}
    if not section.allow_random_weights:
        raise StsaeError("encoder.weights is not set: point it at papagei_s.pt (see DATA_GUIDE.md), or set "
                         "encoder.allow_random_weights: true for a demo with random weights")
    log.warning("PaPaGei-S is running with RANDOM weights (encoder.allow_random_weights: true): embeddings "
                "are NOT the published model's; use this for demos only")
    return random_papagei_s(derive_seed(seed, "papagei_init")), {"weights": None, "sha256": "RANDOM"}


def check_windows(windows: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Windows as a float32[N, 1250] tensor (no copy), or ValueError naming the actual dtype/shape."""
    tensor = torch.as_tensor(windows)
    if tensor.dtype != torch.float32 or tensor.ndim != 2 or tensor.shape[1] != WINDOW_SAMPLES:
        raise ValueError(
            f"windows must be float32[N, {WINDOW_SAMPLES}], got {tensor.dtype}{list(tensor.shape)}")
    return tensor


def embed_batches(embedder: Callable[[torch.Tensor], torch.Tensor], windows: np.ndarray | torch.Tensor,
                  batch_size: int, precision: Precision, device: torch.device = CPU) -> np.ndarray:
    """Apply `embedder` ([B, 1, 1250] → [B, 512], already on `device`) to windows float32[N, 1250] →
    float32[N, 512] on the host.

    Fixed batch boundaries under `torch.inference_mode()` keep the bytes reproducible; "bf16" runs under
    bf16 autocast on `device` and the output is cast back to float32. On CUDA each batch is copied
    without blocking (asynchronous when `windows` is in pinned memory) and the outputs stay on the GPU
    until one copy back at the end, so the host never waits per batch; on the CPU nothing is copied.
    """
    tensor = check_windows(windows)
    out = torch.empty((tensor.shape[0], EMBEDDING_DIM), dtype=torch.float32, device=device)
    with (torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
          cuda_math(device, fp32=precision == "fp32")):
        for start in range(0, tensor.shape[0], batch_size):
            batch = tensor[start:start + batch_size].to(device, non_blocking=True).unsqueeze(1)
            out[start:start + batch.shape[0]] = embedder(batch).float()
    return out.cpu().numpy()


def encode(model: ResNet1DMoE, windows: np.ndarray | torch.Tensor, *, batch_size: int = 256,
           precision: Precision = "fp32") -> np.ndarray:
    """Embed windows with PaPaGei-S: float32[N, 1250] (band-passed, z-scored, 125 Hz) → float32[N, 512].

    The reference path (eager upstream graph, eval mode); the extract stage runs the equivalent,
    faster `encoder_runtime.FastEmbedder` through the same `embed_batches`.
    """
    model.eval()
    return embed_batches(lambda batch: model(batch).embedding, windows, batch_size, precision)
