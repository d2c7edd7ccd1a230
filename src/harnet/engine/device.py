"""Which device and which autocast dtype a run uses (shared by training and inference)."""

from __future__ import annotations

import torch

from harnet.config.experiment import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training, None for full float32 (``train.amp`` off, or not on CUDA).

    ``amp_dtype: auto`` picks bfloat16 where the GPU supports it (Ampere and newer): the float32
    exponent range, so no loss scaling; else float16, which needs the GradScaler."""
    if not (cfg.amp and device.type == "cuda"):
        return None
    if cfg.amp_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
