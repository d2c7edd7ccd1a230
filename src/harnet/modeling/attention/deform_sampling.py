"""Deformable convolution for CPU inference: bilinear sampling with ``grid_sample``, then one matmul.

torchvision's CPU ``deform_conv2d`` builds its column matrix with a scalar bilinear loop per
(channel, tap, position); at the aligned blocks' sizes that loop, not the matmul after it, is most
of its time, which is why the hybrid costs more on the CPU than its FLOPs say. The same columns come
from one vectorised ``F.grid_sample`` per offset group: the 9 taps' sampling points are stacked
along the grid's height, so one call samples every tap of every position at once. The matmul with
the weight is then the same GEMM torchvision runs.

Sampling agrees with torchvision's: pixel centres map exactly (``align_corners=False`` with
coordinates ``(2p + 1) / size - 1``), and with ``padding_mode="zeros"`` each of the four bilinear
corners outside the image contributes zero, as in torchvision's ``bilinear_interpolate``. Results
match to float rounding (tests: ``tests/modeling/attention/test_deform_sampling.py``). It is used
only where no gradient is needed (:func:`use_sampling`); training keeps torchvision's op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import DeformConv2d


def use_sampling(x: Tensor) -> bool:
    """Whether the sampled path should run: CPU tensors, no autograd (eval under ``no_grad`` or
    ``inference_mode``). On CUDA torchvision's kernel is already parallel over positions."""
    return x.device.type == "cpu" and not torch.is_grad_enabled()


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d_sampled(
    x: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation)`` without a
    mask, for weight groups of 1 and any number of offset groups.

    ``offset`` is (N, 2 * G * kh * kw, Ho, Wo) in torchvision's layout: per offset group, per tap
    (row-major), (dy, dx).
    """
    n, c, h, w = x.shape
    c_out, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"deform_conv2d_sampled supports weight groups of 1 only (weight {tuple(weight.shape)}, "
                         f"input channels {c})")
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    dtype, device = x.dtype, x.device
    # Sampling points in input pixels: the regular grid of each tap plus its offset.
    ky, kx = torch.meshgrid(torch.arange(kh, device=device, dtype=dtype) * dh,
                            torch.arange(kw, device=device, dtype=dtype) * dw, indexing="ij")
    base_y = ky.reshape(taps, 1, 1) + (torch.arange(ho, device=device, dtype=dtype) * sh - ph).view(1, ho, 1)
    base_x = kx.reshape(taps, 1, 1) + (torch.arange(wo, device=device, dtype=dtype) * sw - pw).view(1, 1, wo)
    off = offset.reshape(n * groups, taps, 2, ho, wo)
    gy = (off[:, :, 0] + base_y).mul_(2.0 / h).add_(1.0 / h - 1.0)
    gx = (off[:, :, 1] + base_x).mul_(2.0 / w).add_(1.0 / w - 1.0)
    grid = torch.stack((gx, gy), dim=-1).reshape(n * groups, taps * ho, wo, 2)
    sampled = F.grid_sample(x.reshape(n * groups, c // groups, h, w), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=False)
    # (N*G, C/G, taps*Ho, Wo) -> columns (N, C*taps, Ho*Wo), channel-major like the weight's (C, kh, kw).
    columns = sampled.reshape(n, c * taps, ho * wo)
    out = torch.matmul(weight.reshape(c_out, c * taps), columns).view(n, c_out, ho, wo)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def deform_conv(module: DeformConv2d, x: Tensor, offset: Tensor) -> Tensor:
    """``module(x, offset)``, through :func:`deform_conv2d_sampled` where :func:`use_sampling` says so (a
    torchvision ``DeformConv2d`` with weight groups of 1; any other module, e.g. export's portable one, runs as is)."""
    if not isinstance(module, DeformConv2d) or module.groups != 1 or not use_sampling(x):
        return module(x, offset)
    return deform_conv2d_sampled(x, offset, module.weight, module.bias, module.stride, module.padding,
                                 module.dilation)
