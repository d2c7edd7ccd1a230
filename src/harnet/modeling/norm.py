"""Norms: GroupNorm that fits any channel count, and the tower norms, chosen by name in one factory.

GroupNorm needs the group count to divide the channels. The paper's 32 groups divide every ResNet
stage, but not every body we ship (EfficientNet-Lite0's C4 has 112 channels), so blocks that sit on
backbone features ask for the largest group count up to the preferred one that divides.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from harnet.modeling.attention.channel import CrossLevelGroupNorm

LevelNormName = Literal["none", "gn", "cross_level_gn"]


def fitting_groups(channels: int, preferred: int) -> int:
    """The largest group count <= ``preferred`` that divides ``channels`` (112 channels, 32 -> 28)."""
    for groups in range(min(preferred, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def group_norm(channels: int, preferred_groups: int) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with :func:`fitting_groups` groups."""
    return nn.GroupNorm(fitting_groups(channels, preferred_groups), channels)


class LevelGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` applied to each pyramid level on its own, with the list-in, list-out call of
    :class:`CrossLevelGroupNorm` (same parameters and state_dict keys as ``nn.GroupNorm``)."""

    def forward(self, levels: list[Tensor], relu: bool = False) -> list[Tensor]:  # type: ignore[override]
        out = [super(LevelGroupNorm, self).forward(x) for x in levels]
        return [y.relu_() for y in out] if relu else out


def build_level_norm(name: LevelNormName, channels: int, groups: int) -> nn.Module | None:
    """The norm of a head tower, over a list of levels: ``"none"`` (off, RetinaNet: returns None), ``"gn"``
    (GroupNorm per level) or ``"cross_level_gn"`` (statistics over all levels at once, the channel attention's)."""
    if name == "none":
        return None
    if name == "gn":
        return LevelGroupNorm(groups, channels)
    if name == "cross_level_gn":
        return CrossLevelGroupNorm(groups, channels)
    raise ValueError(f"tower norm must be 'none', 'gn' or 'cross_level_gn', got {name!r}")
