"""Optimizer, learning-rate schedule and weight EMA of the training recipe.

The paper's recipe is SGD, linear warmup and step decay. On top of it, ``TrainConfig`` can set
per-parameter learning rates and weight decays (:func:`parameter_groups`) and an exponential
moving average of the weights (:class:`ModelEMA`); their defaults change nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torchvision.ops.misc import FrozenBatchNorm2d

from harnet.config.experiment import DEFAULT_PARAM_OVERRIDES, ParamOverride, TrainConfig
from harnet.config.io import ConfigError
from harnet.modeling.attention.channel import CrossLevelGroupNorm
from harnet.modeling.norm import LevelGroupNorm
from harnet.utils.compat import BatchNormBase, InstanceNormBase, foreach_copy_, foreach_lerp_

# Normalisation layers whose 1-D weights get ``norm_weight_decay``. Subclasses count too: SyncBatchNorm and
# timm's BatchNormAct2d are BatchNorms, timm's GroupNormAct a GroupNorm.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    BatchNormBase, InstanceNormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, FrozenBatchNorm2d,
    CrossLevelGroupNorm, LevelGroupNorm,
)


def backbone_body(model: nn.Module) -> nn.Module | None:
    """The (usually pretrained) body of a detector: HAR-Net's ``model.backbone``, or the ``body`` of a
    torchvision-style backbone that carries its own FPN (``model.backbone.body``; its ``model.backbone.fpn``
    is a new layer, not part of the body). None for a model without a ``backbone`` attribute."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and isinstance(getattr(backbone, "fpn", None), nn.Module):
        body = getattr(backbone, "body", None)
        return body if isinstance(body, nn.Module) else None
    return backbone if isinstance(backbone, nn.Module) else None


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (:data:`NORM_TYPES`). By class, not by name: a wrapper such as torchvision's
    ``Conv2dNormActivation`` is not one (it owns no parameters; its norm child is one)."""
    return isinstance(module, NORM_TYPES)


def _override_for(name: str, overrides: Sequence[ParamOverride]) -> ParamOverride | None:
    return next((o for o in overrides if fnmatchcase(name, o.pattern)), None)


def check_overrides(model: nn.Module, overrides: Sequence[ParamOverride]) -> None:
    """Refuse an override whose pattern matches no parameter name of ``model``: a typo would otherwise
    train silently with the default lr. The :data:`DEFAULT_PARAM_OVERRIDES` entries are exempt, since
    they target the aligned attention, which most presets do not build."""
    names = [name for name, _ in model.named_parameters()]
    for override in overrides:
        if override in DEFAULT_PARAM_OVERRIDES or any(fnmatchcase(n, override.pattern) for n in names):
            continue
        example = names[0] if names else "none"
        raise ConfigError(f"train.param_overrides: pattern {override.pattern!r} matches no parameter of the model "
                          f"(names look like {example!r}; '*' matches any run of characters, dots included)")


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    backbone_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
    norm_weight_decay: float | None = None,
    overrides: Sequence[ParamOverride] = (),
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (learning rate, weight decay), in module order.

    A parameter's lr is ``lr`` times the product of the multipliers that apply to it:

    * ``lr_mult`` of the first of ``overrides`` whose pattern matches its full name (by default the
      aligned attention's offset conv: 0.1);
    * ``backbone_lr_mult`` inside the backbone body (:func:`backbone_body`; not the FPN, not the
      aligned attention), e.g. 0.1 to fine-tune a pretrained body gently;
    * ``bias_lr_mult`` for a bias (any parameter named ``bias``, norm biases included; Caffe's 2.0).

    Weight decay: ``bias_weight_decay`` for biases, else ``norm_weight_decay`` for the weights of
    normalisation layers (:func:`is_norm`, 1-D parameters only), else ``weight_decay``; None means
    ``weight_decay``. Biases win over norms, as in torchvision's detection references, and a matching
    override's ``weight_decay``, when set, wins over both (it names the parameters explicitly).

    Groups appear in the order of their first parameter in ``model.named_parameters()`` (module order),
    parameters in that order too, so the optimizer state lines up with a checkpoint's. With every option
    at its default there is one group per lr multiplier: 1 for all but the offset conv's 0.1.
    """
    body = backbone_body(model)
    in_body = {id(p) for p in body.parameters()} if body is not None and backbone_lr_mult != 1.0 else set()
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            override = _override_for(f"{prefix}.{name}" if prefix else name, overrides)
            mult, decay = (override.lr_mult if override else 1.0), weight_decay
            if id(p) in in_body:
                mult *= backbone_lr_mult
            if name == "bias":
                mult *= bias_lr_mult
                decay = weight_decay if bias_weight_decay is None else bias_weight_decay
            elif norm_weight_decay is not None and is_norm(module) and p.ndim <= 1:
                decay = norm_weight_decay
            if override is not None and override.weight_decay is not None:
                decay = override.weight_decay
            groups.setdefault((mult, decay), []).append(p)
    return [{"params": ps, "lr": lr * mult, "lr_mult": mult, "weight_decay": decay}
            for (mult, decay), ps in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg``'s optimizer over :func:`parameter_groups`; raises ``ConfigError`` for a
    ``param_overrides`` pattern that matches nothing in ``model`` (:func:`check_overrides`)."""
    check_overrides(model, cfg.param_overrides)
    groups = parameter_groups(model, cfg.lr, cfg.weight_decay, backbone_lr_mult=cfg.backbone_lr_mult,
                              bias_lr_mult=cfg.bias_lr_mult, bias_weight_decay=cfg.bias_weight_decay,
                              norm_weight_decay=cfg.norm_weight_decay, overrides=cfg.param_overrides)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, foreach=True)


def describe_groups(optimizer: torch.optim.Optimizer) -> str:
    """One line per parameter group: lr multiplier, weight decay, tensor and element counts."""
    return "; ".join(f"lr x{g.get('lr_mult', 1.0):g} wd {g['weight_decay']:g}: {len(g['params'])} tensors "
                     f"({sum(p.numel() for p in g['params']):,} weights)" for g in optimizer.param_groups)


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


def ema_decay_at(decay: float, tau: float, updates: int) -> float:
    """The EMA decay used at the ``updates``-th update (1-based): ``decay * (1 - exp(-updates / tau))``.

    This is the ramp of ultralytics' ``ModelEMA``. A fixed decay of 0.999 would keep ~37% of the
    random initialisation after 1000 updates; the ramp starts near 0 (the average follows the model)
    and reaches ``decay`` after a few ``tau`` updates, so short runs get a useful average: with
    ``tau`` about a tenth of the run, the last ~third of the run is averaged at the full decay. timm's
    ``ModelEmaV3`` warmup (``1 - (1 + updates / gamma) ** -power``) does the same job; this one has a
    single knob. ``tau = 0``: no ramp, the constant ``decay`` (``get_ema_multi_avg_fn``'s behaviour).
    """
    if tau <= 0:
        return decay
    return decay * (1.0 - math.exp(-updates / tau))


class ModelEMA(AveragedModel):
    """Exponential moving average of a model's weights *and* buffers (BatchNorm statistics), with
    the decay ramp of :func:`ema_decay_at`.

    torch's ``AveragedModel`` does the bookkeeping (``module``: a deep copy of the model holding the
    average; ``n_averaged``: the number of updates, saved in ``state_dict``). Its own
    ``get_ema_multi_avg_fn`` has a constant decay, so the averaging function here computes the
    ramped decay from ``n_averaged``. Floating-point tensors are lerped; integer buffers (BatchNorm's
    ``num_batches_tracked``) are copied from the model. The first update copies the model.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.tau = float(decay), float(tau)
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.module.eval()
        self.module.requires_grad_(False)

    @property
    def updates(self) -> int:
        return int(self.n_averaged)

    @torch.no_grad()
    def _average(self, ema: Sequence[Tensor], current: Sequence[Tensor], n_averaged: Tensor | int) -> None:
        if not (torch.is_floating_point(ema[0]) or torch.is_complex(ema[0])):
            foreach_copy_(ema, current)
            return
        d = ema_decay_at(self.decay, self.tau, int(n_averaged) + 1)
        foreach_lerp_(ema, current, 1.0 - d)

    def train(self, mode: bool = True) -> ModelEMA:
        """The average is only ever evaluated: its module stays in eval mode."""
        super().train(mode)
        self.module.eval()
        return self
