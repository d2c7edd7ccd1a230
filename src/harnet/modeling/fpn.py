"""FPN P3-P7 from C3-C5: torchvision's FeaturePyramidNetwork plus its LastLevelP6P7 block."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from harnet.config.model import FPNConfig


def build_fpn(in_channels: dict[str, int], cfg: FPNConfig) -> FeaturePyramidNetwork:
    """P3-P5 from lateral + top-down convs (P5 without its 3x3 conv when ``p5_smooth`` is off), P6 from
    C5 (paper) or P5 (torchvision v1), P7 from P6."""
    p6_in = in_channels["c5"] if cfg.p6_from == "c5" else cfg.channels
    extra = LastLevelP6P7(p6_in, cfg.channels)
    # torchvision infers the P6 source from the channel counts; state it explicitly instead so
    # that p6_from is honoured even when C5 happens to have ``cfg.channels`` channels.
    extra.use_P5 = cfg.p6_from == "p5"
    fpn = FeaturePyramidNetwork(list(in_channels.values()), cfg.channels, extra_blocks=extra)
    if not cfg.p5_smooth:  # the authors' P5 is the 1x1 lateral of C5 alone (no 3x3 output conv)
        fpn.layer_blocks[-1] = nn.Identity()
    return fpn


def pyramid_levels(features: OrderedDict[str, Tensor]) -> list[Tensor]:
    """FPN output dict -> [P3, P4, P5, P6, P7]."""
    return list(features.values())


__all__ = ["build_fpn", "pyramid_levels"]
