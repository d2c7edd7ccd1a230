"""Spatial attention: a per-level mask from stacked dilated convs with symmetric rates 1-2-5-2-1.

Growing then shrinking dilation covers a wide context without gridding artefacts; the final
sigmoid gives a per-location weight in (0, 1) that re-weights both head towers of that level.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from harnet.modeling.norm import group_norm
from harnet.modeling.pyramid import LEVEL_NAMES


class SpatialAttention(nn.Module):
    """One mask generator per pyramid level (levels do not share weights).

    ``rates`` are the dilations of the ``channels``-wide 3x3 convs before the final 3x3 conv to one
    channel (which is the last "1" of 1-2-5-2-1); ``coarse_rates`` replace them on the levels from
    ``coarse_from`` on (the authors' 1-2-3-2 variant on P6/P7; the default is P6's index in the pyramid).
    Convs start at gaussian std 0.01, as in the authors' files.
    """

    def __init__(
        self,
        in_channels: int,
        num_levels: int,
        *,
        channels: int = 16,
        rates: Sequence[int] = (1, 2, 5, 2),
        coarse_rates: Sequence[int] | None = None,
        coarse_from: int = LEVEL_NAMES.index("P6"),
        gn_groups: int | None = 4,
        mode: str = "mul",
    ) -> None:
        super().__init__()
        if mode not in ("mul", "residual"):
            raise ValueError(f"spatial attention mode must be 'mul' or 'residual', got {mode!r}")
        self.mode = mode
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            level_rates = coarse_rates if coarse_rates is not None and level >= coarse_from else rates
            layers: list[nn.Module] = []
            width = in_channels
            for rate in level_rates:
                layers.append(nn.Conv2d(width, channels, 3, padding=rate, dilation=rate))
                if gn_groups:
                    layers.append(group_norm(channels, gn_groups))
                layers.append(nn.ReLU(inplace=True))
                width = channels
            layers.append(nn.Conv2d(width, 1, 3, padding=1))
            self.levels.append(nn.Sequential(*layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def masks(self, features: list[Tensor]) -> list[Tensor]:
        """One (N, 1, H, W) mask in (0, 1) per level."""
        return [net(x).sigmoid() for net, x in zip(self.levels, features)]

    def reweight(self, towers: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        """Re-weight tower features: ``f * m`` or, residually, ``f * (1 + m)``."""
        if self.mode == "residual":
            return [f * (1 + m) for f, m in zip(towers, masks)]
        return [f * m for f, m in zip(towers, masks)]
