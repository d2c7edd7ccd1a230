"""Optimizer and learning-rate schedule of the paper's recipe (SGD, linear warmup, step decay)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harnet.experiment import TrainConfig


def parameter_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate; a module with an ``lr_mult`` attribute
    (the aligned attention's offset conv: 0.1) gets ``lr * lr_mult`` for its own parameters."""
    groups: dict[float, list[nn.Parameter]] = {}
    for module in model.modules():
        mult = float(getattr(module, "lr_mult", 1.0))
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        groups.setdefault(mult, []).extend(params)
    return [{"params": ps, "lr": lr * mult, "lr_mult": mult} for mult, ps in groups.items() if ps]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warmup from ``warmup_factor``, then x gamma at
    each of ``lr_steps``."""

    def factor(step: int) -> float:
        warm = 1.0
        if step < cfg.warmup_steps:
            alpha = step / cfg.warmup_steps
            warm = cfg.warmup_factor * (1 - alpha) + alpha
        return warm * cfg.lr_gamma ** sum(step >= s for s in cfg.lr_steps)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
