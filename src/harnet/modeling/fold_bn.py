"""Fold inference-time BatchNorm into the conv that feeds it.

In eval mode a BatchNorm (frozen or not) is a per-channel affine ``y * s + t``. On the CPU it costs
two full passes over the conv's output (one multiply, one add) for no arithmetic the conv could
not do itself: ``conv(x, W) * s + t == conv(x, W * s) + (b * s + t)``. On the demo's
EfficientNet-Lite0 body those passes are about a sixth of the network's time at 320 px, so the
detector folds them at load (:func:`fold_batch_norms`).

Which BatchNorm follows which conv is read from one traced forward pass, not from module names:
a norm is folded only when its input *is* the output tensor of a ``nn.Conv2d`` that no other module
read, so a network whose declaration order differs from its data flow is never folded wrongly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

_BN_BUFFERS = ("running_mean", "running_var")


def is_affine_batch_norm(module: nn.Module) -> bool:
    """A 2d BatchNorm that is a fixed affine map now: torchvision's or timm's frozen BN (with or
    without a fused activation), or ``nn.BatchNorm2d`` in eval mode with running statistics."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return not module.training and module.track_running_stats and module.running_mean is not None
    names = type(module).__name__
    return "FrozenBatchNorm" in names and all(hasattr(module, a) for a in (*_BN_BUFFERS, "weight", "bias", "eps"))


def _scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """The per-channel ``(s, t)`` with ``bn(y) == y * s + t`` in eval mode."""
    var = bn.running_var.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight * (var + bn.eps).rsqrt()
    return scale, bias - bn.running_mean.double() * scale


def _replacement(bn: nn.Module) -> nn.Module:
    """What stays of a norm once its affine is in the conv: timm's norm+act keeps its dropout and
    activation, a plain norm becomes the identity."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    kept = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    if not kept:
        return nn.Identity()
    return kept[0] if len(kept) == 1 else nn.Sequential(*kept)


def conv_bn_pairs(model: nn.Module, example: Any) -> list[tuple[str, str]]:
    """``(conv name, norm name)`` for every affine BatchNorm fed directly and only by a ``nn.Conv2d``,
    found by running ``model`` once on ``example`` (a batch for its ``forward``)."""
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, str] = {}  # id of a conv's output tensor -> conv name
    reads: dict[int, int] = {}  # id of a tensor -> how many modules took it as input
    inputs: dict[str, int] = {}  # norm name -> id of its input tensor
    handles: list[RemovableHandle] = []
    keep_alive: list[Tensor] = []  # ids stay unique while the pass's tensors are alive

    def pre(module: nn.Module, args: tuple[object, ...]) -> None:
        for a in args:
            if isinstance(a, Tensor):
                reads[id(a)] = reads.get(id(a), 0) + 1
                keep_alive.append(a)
        if is_affine_batch_norm(module) and args and isinstance(args[0], Tensor):
            inputs[names[id(module)]] = id(args[0])

    def post(module: nn.Module, args: tuple[object, ...], out: object) -> None:
        if isinstance(out, Tensor):
            produced[id(out)] = names[id(module)]
            keep_alive.append(out)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        elif not list(module.children()) or is_affine_batch_norm(module):
            handles.append(module.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [(produced[t], bn) for bn, t in inputs.items() if t in produced and reads.get(t, 0) == 1]


@torch.no_grad()
def fold_batch_norms(model: nn.Module, example: Any) -> int:
    """Fold every affine BatchNorm of ``model`` into the conv before it, in place; returns how many.

    ``example`` is an input for ``model.forward`` that the data flow is read from (its values do not
    matter). The folded model computes the same function up to float rounding (the affine is
    combined in float64, then stored in the conv's dtype)."""
    modules = dict(model.named_modules())
    pairs = conv_bn_pairs(model, example)
    for conv_name, bn_name in pairs:
        conv, bn = modules[conv_name], modules[bn_name]
        assert isinstance(conv, nn.Conv2d)
        scale, shift = _scale_shift(bn)
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, _replacement(bn))
    return len(pairs)
