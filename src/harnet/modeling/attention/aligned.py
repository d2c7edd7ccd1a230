"""Aligned attention: a residual deformable bottleneck on backbone C5 (and C4).

The deformable 3x3 conv samples where the predicted offsets point, so features follow the object's
shape instead of a fixed grid. Offsets start at zero (the layer starts as a plain conv) and the
output GN's scale starts at 0.1, so at initialisation the block is a small perturbation of the
backbone feature it is added to. As in the authors' files (``fpn_relu5_1c``, ``fpn_relu4_1c``) the
branch ends in a ReLU, so it can only add to the backbone feature, never cancel it. On the CPU
without autograd the deformable conv runs as :mod:`~harnet.modeling.attention.deform_sampling` (the
same numbers, a vectorised sampling instead of torchvision's scalar loop).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from harnet.modeling.attention.deform_sampling import deform_conv
from harnet.modeling.norm import group_norm


class DeformableBottleneck(nn.Module):
    """``x + ReLU(GN(conv1x1(ReLU(GN(deform3x3(ReLU(GN(conv1x1(x))), offsets))))))``.

    GroupNorm uses ``gn_groups`` groups, or the largest count below it that divides the channels
    (a 112-channel C4 gets 28).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        mid_channels: int = 256,
        deform_groups: int = 4,
        gn_groups: int = 32,
        out_scale_init: float = 0.1,
        out_relu: bool = True,
    ) -> None:
        super().__init__()
        mid = mid_channels
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), group_norm(mid, gn_groups), nn.ReLU(inplace=True)
        )
        # 2 (x, y) offsets per kernel tap per deformable group. The authors train this conv at 0.1x the lr:
        # TrainConfig.param_overrides does so by its name (``aligned.*.offset.*``).
        self.offset = nn.Conv2d(mid, deform_groups * 2 * 9, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.deform = DeformConv2d(mid, mid, 3, padding=1, bias=False)
        self.deform_norm = group_norm(mid, gn_groups)
        self.expand = nn.Conv2d(mid, in_channels, 1, bias=False)
        self.expand_norm = group_norm(in_channels, gn_groups)
        self.out_relu = out_relu
        nn.init.constant_(self.expand_norm.weight, out_scale_init)
        for conv in (self.reduce[0], self.deform, self.expand):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def offsets(self, x: Tensor) -> Tensor:
        """Sampling offsets (N, 2*9*groups, H, W) for the deformable conv, in torchvision's layout (per
        offset group, per kernel tap row-major, (dy, dx))."""
        return self.offset(self.reduce(x))

    def forward_with_offsets(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block's output and the offsets it sampled with, from one pass (what explain shows)."""
        y = self.reduce(x)
        offsets = self.offset(y)
        y = deform_conv(self.deform, y, offsets)  # grid_sample + matmul on CPU without autograd
        y = self.deform_norm(y).relu_()
        y = self.expand_norm(self.expand(y))
        return x + (y.relu() if self.out_relu else y), offsets

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_offsets(x)[0]
