"""Model size and compute: parameter counts per part and GFLOPs of one forward pass.

FLOPs are counted with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the
matrix-multiply-like ops (convolutions, linear layers, matmuls) at **2 FLOPs per multiply-add**
and ignores biases, norms, activations and other element-wise ops. torchvision's deformable
convolution is a custom op the counter does not know; it is added with the same convention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import DeformConv2d

PARTS = ("backbone", "aligned", "fpn", "head")


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Number of parameters: ``total``, ``trainable`` (requires_grad) and one entry per top-level
    part of a :class:`~harnet.modeling.harnet.HARNet` (``backbone``, ``aligned``, ``fpn``, ``head``; 0 where
    the model has no such part, e.g. ``aligned`` without aligned attention)."""
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for part in PARTS:
        module = getattr(model, part, None)
        counts[part] = sum(p.numel() for p in module.parameters()) if isinstance(module, nn.Module) else 0
    return counts


def deform_conv2d_flops(x_shape: Any, w_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``torchvision::deform_conv2d``: 2 * N * Cout * Hout * Wout * (Cin / groups) * kh * kw.

    Same convention as the counter's own convolution formula (2 per multiply-add; the bilinear
    sampling of the offsets and the bias are not counted). The weight's shape is
    (Cout, Cin / groups, kh, kw), so its second dimension is already per group. The signature is
    the shape-based one ``FlopCounterMode(custom_mapping=...)`` expects: tensor arguments arrive as
    their shapes, the output's shape as ``out_shape``.
    """
    n, c_out, h_out, w_out = out_shape
    _, c_in_per_group, kh, kw = w_shape
    return 2 * n * c_out * h_out * w_out * c_in_per_group * kh * kw


def _deform_op() -> Any:
    """The OpOverloadPacket of torchvision's deformable conv, or None if it is not registered."""
    try:
        return torch.ops.torchvision.deform_conv2d
    except (AttributeError, RuntimeError):
        return None


def _make_counter(deform_op: Any) -> FlopCounterMode:
    """A silent counter that knows the deformable conv; without ``custom_mapping`` support (old
    torch) a plain one, and the caller falls back to forward hooks for the deformable convs."""
    if deform_op is None:
        return FlopCounterMode(display=False)
    try:
        return FlopCounterMode(display=False, custom_mapping={deform_op: deform_conv2d_flops})
    except TypeError:
        return FlopCounterMode(display=False)


def _forward_raw(model: nn.Module) -> Any:
    """HAR-Net's ``forward_raw``; for a torchvision detector (RetinaNet), its backbone + head."""
    if hasattr(model, "forward_raw"):
        return model.forward_raw
    return lambda images: model.head(list(model.backbone(images).values()))  # type: ignore[operator]


def count_flops(model: nn.Module, size: int = 512) -> float:
    """GFLOPs (= counted FLOPs / 1e9) of one ``model.forward_raw`` (HAR-Net) or backbone + head
    (torchvision's detectors) on a normalised (1, 3, size, size)
    batch, i.e. backbone + attentions + FPN + head; no resizing, anchors or post-processing.

    Convention: 2 FLOPs per multiply-add (what FlopCounterMode counts), so divide by 2 to compare
    with papers that report multiply-adds as "FLOPs". ``size`` should be a multiple of 32 (of 128
    for P7 without rounding). The model is run in eval mode under ``no_grad`` and its mode is
    restored, so BatchNorm statistics are untouched. The deformable convs are counted through the
    counter's ``custom_mapping`` or, where that does not reach them, by forward hooks.
    """
    transform = getattr(getattr(model, "config", None), "transform", None)
    mean = torch.tensor(getattr(transform, "image_mean", (0.485, 0.456, 0.406)))[:, None, None]
    std = torch.tensor(getattr(transform, "image_std", (0.229, 0.224, 0.225)))[:, None, None]
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    images = ((torch.rand(1, 3, size, size, generator=g) - mean) / std).to(device)

    hooked: list[int] = []

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        assert isinstance(module, DeformConv2d)
        hooked.append(deform_conv2d_flops(args[0].shape, module.weight.shape, out_shape=out.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, DeformConv2d)]
    deform_op = _deform_op()
    counter = _make_counter(deform_op)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter:
            _forward_raw(model)(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    total = counter.get_total_flops()
    if deform_op is None or counter.get_flop_counts().get("Global", {}).get(deform_op, 0) == 0:
        total += sum(hooked)
    return total / 1e9


__all__ = ["count_flops", "count_parameters", "deform_conv2d_flops"]
