"""torchvision's ``deform_conv2d`` (v1, no modulation mask) in standard ops: offsets -> sampling grid
-> ``grid_sample`` -> one matmul with the conv weight.

Exported, this is ``GridSample`` + ``MatMul`` instead of ONNX ``DeformConv``, which OpenVINO's ONNX
reader and TensorRT (without a plugin) do not load. The numbers are the same:
``deform_conv2d`` reads each tap at ``(y, x) = (i*stride - pad + ki*dilation + dy, ...)`` by
bilinear interpolation with zero outside the image, which is ``grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)`` at the normalised point ``(2x + 1) / W - 1``.
All offset groups and taps go through one ``grid_sample`` call (groups folded into the batch,
taps into the rows), so the exported graph stays small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d


def deform_conv2d_portable(x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                           stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                           dilation: tuple[int, int] = (1, 1)) -> Tensor:
    """Same arguments and result as ``torchvision.ops.deform_conv2d`` without ``mask`` (conv groups 1)."""
    n, channels, height, width = x.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != channels:
        raise ValueError(f"portable deform conv: groups=1 only (weight expects {c_in} channels, got {channels})")
    taps = kh * kw
    out_h, out_w = offset.shape[-2], offset.shape[-1]
    groups = offset.shape[1] // (2 * taps)
    # (N, G, K, 2, Ho, Wo): per group, per tap (row-major), (dy, dx)
    off = offset.reshape(n, groups, taps, 2, out_h, out_w)
    ki = torch.arange(kh, device=x.device, dtype=x.dtype).repeat_interleave(kw) * dilation[0]
    kj = torch.arange(kw, device=x.device, dtype=x.dtype).repeat(kh) * dilation[1]
    rows = torch.arange(out_h, device=x.device, dtype=x.dtype) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=x.device, dtype=x.dtype) * stride[1] - padding[1]
    y = rows[None, :, None] + ki[:, None, None] + off[:, :, :, 0]  # (N, G, K, Ho, Wo)
    xx = cols[None, None, :] + kj[:, None, None] + off[:, :, :, 1]
    grid = torch.stack(((2 * xx + 1) / width - 1, (2 * y + 1) / height - 1), dim=-1)  # (N, G, K, Ho, Wo, 2)
    grid = grid.reshape(n * groups, taps * out_h, out_w, 2)
    sampled = F.grid_sample(x.reshape(n * groups, channels // groups, height, width), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)  # (N*G, C/G, K*Ho, Wo)
    columns = sampled.reshape(n, channels * taps, out_h * out_w)  # channel-major, then tap: the weight's order
    out = torch.matmul(weight.reshape(c_out, channels * taps), columns).reshape(n, c_out, out_h, out_w)
    return out if bias is None else out + bias[None, :, None, None]


class PortableDeformConv2d(nn.Module):
    """A ``DeformConv2d`` (same parameters) computed by :func:`deform_conv2d_portable`; export swaps it
    in for the real one (:func:`make_portable`)."""

    def __init__(self, conv: DeformConv2d) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("portable deform conv supports groups=1 only")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            raise ValueError("portable deform conv has no modulation mask (v1 only)")
        return deform_conv2d_portable(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)


def make_portable(model: nn.Module) -> nn.Module:
    """``model`` with every ``DeformConv2d`` replaced in place by a :class:`PortableDeformConv2d`
    sharing its parameters (pass a copy to keep the original)."""
    for name, child in list(model.named_children()):
        if isinstance(child, DeformConv2d):
            setattr(model, name, PortableDeformConv2d(child))
        else:
            make_portable(child)
    return model
