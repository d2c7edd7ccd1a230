"""Anchors: torchvision's AnchorGenerator, with the anchor centres at each level's true stride.

torchvision infers a level's stride as ``padded image size // feature-map size``. That is the
stride only when the padded size is a multiple of the coarsest stride: a 416 px batch (400 px padded
to a multiple of 32) gives P6 a 7-cell grid and a "stride" of 59 instead of 64, and P7 104 instead
of 128, shifting the far anchors by up to 72 px from the features they are read from. The authors'
anchors sit at exact multiples of 2^level, so HAR-Net passes the strides in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from harnet.config.model import AnchorConfig


class LevelStrideAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` whose centres step by the given per-level strides (P3..P7: 8..128)."""

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int]) -> None:
        super().__init__(tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios)))
        if len(strides) != len(sizes):
            raise ValueError(f"one stride per level: {len(sizes)} levels, strides {list(strides)}")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        levels = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(levels) for _ in image_list.image_sizes]


def build_anchor_generator(cfg: AnchorConfig) -> AnchorGenerator:
    """One generator for P3..P7; per location the anchors are ordered ratio-major, scale-minor,
    the same order torchvision's RetinaNet head expects. ``cfg.strides`` None: torchvision's own."""
    sizes = cfg.sizes_per_level()
    ratios = (tuple(cfg.ratios),) * len(sizes)
    if cfg.strides is None:
        return AnchorGenerator(sizes, ratios)
    return LevelStrideAnchorGenerator(sizes, ratios, cfg.strides)
