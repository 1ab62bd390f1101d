"""Where a run computes, and in which precision: the device a config names, and bf16 autocast where the
hardware runs it fast."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from omegaconf import DictConfig

from runner.config import Precision
from runner.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast where the hardware has bf16 arithmetic (CUDA, or CPUs with AVX512-BF16/AMX)."""
    if precision != Precision.auto:
        return precision == Precision.bf16
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()  # without native bf16, emulation is slower than fp32


def autocast(cfg: DictConfig, device: torch.device):
    if use_bf16(cfg.trainer.precision, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
