"""Spatial attention: a per-level mask from stacked dilated convs with symmetric rates 1-2-5-2-1.

Growing then shrinking dilation covers a wide context without gridding artefacts; the final
sigmoid gives a per-location weight in (0, 1) that re-weights both head towers of that level.
"""

from __future__ import annotations

from torch import Tensor, nn

from harnet.config import SpatialAttentionConfig


class SpatialAttention(nn.Module):
    """One mask generator per pyramid level (levels do not share weights)."""

    def __init__(self, in_channels: int, num_levels: int, cfg: SpatialAttentionConfig) -> None:
        super().__init__()
        self.mode = cfg.mode
        self.levels = nn.ModuleList()
        for level in range(num_levels):
            coarse = level >= 3 and cfg.coarse_rates is not None  # P6, P7
            rates = cfg.coarse_rates if coarse else cfg.rates
            layers: list[nn.Module] = []
            channels = in_channels
            for rate in rates:
                layers.append(nn.Conv2d(channels, cfg.channels, 3, padding=rate, dilation=rate))
                if cfg.group_norm:
                    layers.append(nn.GroupNorm(cfg.gn_groups, cfg.channels))
                layers.append(nn.ReLU(inplace=True))
                channels = cfg.channels
            layers.append(nn.Conv2d(channels, 1, 3, padding=1))
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
