"""Channel attention: cross-level GroupNorm and cross-level squeeze-and-excitation.

Both look at all pyramid levels at once. The GN statistics of each (image, group) are taken over
the positions of P3..P7 together, so every level is normalised on a common scale and the head's
shared weights see comparable inputs; the SE pools every level and emits one channel-weight
vector that scales all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossLevelGroupNorm(nn.Module):
    """GroupNorm whose mean/variance span all pyramid levels (one affine shared by the levels).

    Implemented as one fused ``F.group_norm`` over the levels' flattened positions concatenated
    along the spatial axis, which is exactly the pooled statistic and costs one kernel, not a
    Python loop over levels.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, levels: list[Tensor], relu: bool = False) -> list[Tensor]:
        """Normalise (and optionally ReLU, fused on the concatenated tensor) every level."""
        n, c = levels[0].shape[:2]
        sizes = [x.shape[-2] * x.shape[-1] for x in levels]
        flat = torch.cat([x.reshape(n, c, -1) for x in levels], dim=2)
        flat = F.group_norm(flat, self.num_groups, self.weight, self.bias, self.eps)
        if relu:
            flat = flat.relu_()
        return [y.view_as(x) for y, x in zip(flat.split(sizes, dim=2), levels)]


class CrossLevelSE(nn.Module):
    """Squeeze every level (global average pool), concatenate, excite once, scale every level."""

    def __init__(self, channels: int, num_levels: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels * num_levels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )

    def weights(self, levels: list[Tensor]) -> Tensor:
        """The shared channel weights, (N, C) in (0, 1)."""
        pooled = torch.cat([x.mean(dim=(2, 3)) for x in levels], dim=1)
        return torch.sigmoid(self.fc(pooled))

    def forward(self, levels: list[Tensor]) -> list[Tensor]:
        w = self.weights(levels)[:, :, None, None]
        return [x * w for x in levels]
