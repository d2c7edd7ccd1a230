"""GroupNorm that fits any channel count.

GroupNorm needs the group count to divide the channels. The paper's 32 groups divide every ResNet
stage, but not every body we ship (EfficientNet-Lite0's C4 has 112 channels), so blocks that sit on
backbone features ask for the largest group count up to the preferred one that divides.
"""

from __future__ import annotations

from torch import nn


def fitting_groups(channels: int, preferred: int) -> int:
    """The largest group count <= ``preferred`` that divides ``channels`` (112 channels, 32 -> 28)."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def group_norm(channels: int, preferred_groups: int) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with :func:`fitting_groups` groups."""
    return nn.GroupNorm(fitting_groups(channels, preferred_groups), channels)
