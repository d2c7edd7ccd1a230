"""Anchors: torchvision's AnchorGenerator, with the anchor centres at each level's true stride.

torchvision infers a level's stride as ``padded image size // feature-map size``. That is the
stride only when the padded size is a multiple of the coarsest stride: a 416 px batch (400 px padded
to a multiple of 32) gives P6 a 7-cell grid and a "stride" of 59 instead of 64, and P7 104 instead
of 128, shifting the far anchors by up to 72 px from the features they are read from. The authors'
anchors sit at exact multiples of 2^level (``LEVEL_STRIDES``), so HAR-Net uses those by default
(``anchors.stride_mode: level``) and keeps torchvision's rule as ``stride_mode: torchvision``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from harnet.config.model import AnchorConfig
from harnet.modeling.pyramid import LEVEL_STRIDES

StrideMode = Literal["level", "torchvision"]  # AnchorConfig.stride_mode


class PyramidAnchorGenerator(AnchorGenerator):
    """``AnchorGenerator`` whose centres step by ``LEVEL_STRIDES`` (``stride_mode="level"``) or by
    torchvision's ``padded size // grid size`` (``"torchvision"``, bit-identical to its generator).

    Only the batch's padded size and the grid sizes decide the anchors, so :meth:`grid` takes them
    directly: export builds the anchors of a batch from :func:`~harnet.modeling.pyramid.level_shapes`
    without feature maps.
    """

    def __init__(self, sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[Sequence[float]],
                 stride_mode: StrideMode = "level") -> None:
        super().__init__(tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios)))
        if stride_mode not in ("level", "torchvision"):
            raise ValueError(f"anchor stride_mode must be 'level' or 'torchvision', got {stride_mode!r}")
        if stride_mode == "level" and len(sizes) != len(LEVEL_STRIDES):
            raise ValueError(f"one anchor size set per pyramid level ({len(LEVEL_STRIDES)}), got {len(sizes)}")
        self.stride_mode = stride_mode

    def strides(self, padded_size: Sequence[int], grid_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
        """(y, x) centre spacing of every level for a batch padded to ``padded_size`` (h, w)."""
        if self.stride_mode == "level":
            return [(s, s) for s in LEVEL_STRIDES]
        return [(int(padded_size[0]) // int(g[0]), int(padded_size[1]) // int(g[1])) for g in grid_sizes]

    def grid(self, padded_size: Sequence[int], grid_sizes: Sequence[Sequence[int]], num_images: int,
             dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> list[Tensor]:
        """Anchors of each of ``num_images`` images, (sum HWA, 4) XYXY, levels P3..P7 concatenated."""
        device = device if device is not None else torch.device("cpu")
        strides = [[torch.tensor(s, dtype=torch.int64, device=device) for s in level]
                   for level in self.strides(padded_size, grid_sizes)]
        self.set_cell_anchors(dtype, device)
        levels = self.grid_anchors([list(map(int, g)) for g in grid_sizes], strides)
        return [torch.cat(levels) for _ in range(num_images)]

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        return self.grid(image_list.tensors.shape[-2:], [fm.shape[-2:] for fm in feature_maps],
                         len(image_list.image_sizes), feature_maps[0].dtype, feature_maps[0].device)


def anchors_per_level(grid_sizes: Sequence[Sequence[int]], num_anchors: int) -> list[int]:
    """How many anchors each level holds: its cells times the anchors per cell."""
    return [int(g[0]) * int(g[1]) * num_anchors for g in grid_sizes]


def build_anchor_generator(cfg: AnchorConfig) -> PyramidAnchorGenerator:
    """One generator for P3..P7; per location the anchors are ordered ratio-major, scale-minor,
    the same order torchvision's RetinaNet head expects."""
    sizes = cfg.sizes_per_level()
    ratios = (tuple(cfg.ratios),) * len(sizes)
    return PyramidAnchorGenerator(sizes, ratios, cfg.stride_mode)
