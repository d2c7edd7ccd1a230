"""Anchors: torchvision's AnchorGenerator configured from ``AnchorConfig``."""

from __future__ import annotations

from torchvision.models.detection.anchor_utils import AnchorGenerator

from harnet.config import AnchorConfig


def build_anchor_generator(cfg: AnchorConfig) -> AnchorGenerator:
    """One generator for P3..P7; per location the anchors are ordered ratio-major, scale-minor,
    the same order torchvision's RetinaNet head expects."""
    sizes = cfg.sizes_per_level()
    return AnchorGenerator(sizes, (tuple(cfg.ratios),) * len(sizes))
