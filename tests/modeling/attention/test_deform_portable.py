"""The portable deformable conv (grid_sample + matmul) gives torchvision's deform_conv2d, offsets
pointing inside, across and outside the image included."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import DeformConv2d, deform_conv2d

from harnet.modeling.attention.aligned import DeformableBottleneck
from harnet.modeling.attention.deform_portable import PortableDeformConv2d, deform_conv2d_portable, make_portable


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"), [(1, 1, 1, 4), (2, 1, 1, 1), (1, 2, 2, 2)])
def test_matches_deform_conv2d(stride: int, padding: int, dilation: int, groups: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 11, 13, generator=g)
    weight = torch.randn(6, 8, 3, 3, generator=g)
    bias = torch.randn(6, generator=g)
    out_h = (11 + 2 * padding - dilation * 2 - 1) // stride + 1
    out_w = (13 + 2 * padding - dilation * 2 - 1) // stride + 1
    offset = torch.randn(2, groups * 18, out_h, out_w, generator=g) * 3  # some taps land outside the image
    expected = deform_conv2d(x, offset, weight, bias, (stride, stride), (padding, padding), (dilation, dilation))
    got = deform_conv2d_portable(x, offset, weight, bias, (stride, stride), (padding, padding), (dilation, dilation))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_make_portable_keeps_the_block_output() -> None:
    torch.manual_seed(0)
    block = DeformableBottleneck(16, mid_channels=16, deform_groups=4, gn_groups=4).eval()
    with torch.no_grad():
        block.offset.weight.normal_(std=0.1)
        x = torch.randn(1, 16, 9, 10)
        expected = block(x)
        portable = make_portable(block)
        assert isinstance(portable.deform, PortableDeformConv2d)
        assert not any(isinstance(m, DeformConv2d) for m in portable.modules())
        torch.testing.assert_close(portable(x), expected, atol=1e-4, rtol=1e-4)
