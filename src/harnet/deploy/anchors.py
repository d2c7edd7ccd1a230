"""Anchors in numpy: :class:`harnet.modeling.anchors.PyramidAnchorGenerator` (torchvision's
``AnchorGenerator`` cell anchors, rounded; centres at each level's stride) without torch.

Only the padded batch size and the config decide them, so the deployment runtime rebuilds the
anchors of every batch from the export metadata instead of shipping a fixed anchor table, which
would tie the model to one input size. Why two copies: training builds its anchors with torchvision's
generator on the device of the feature maps (and matches them to targets there); prediction must run
without torch. tests/deploy/test_deploy_postprocess.py ties the two (``test_anchors_match_the_generator``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harnet.config.model import AnchorConfig
from harnet.config.pyramid import LEVEL_STRIDES


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature-map sizes of P3..P7 for a padded input: ``ceil(size / stride)`` (as
    :func:`harnet.modeling.pyramid.level_shapes`)."""
    return [(-(-height // s), -(-width // s)) for s in LEVEL_STRIDES]


def cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(A, 4) anchors around (0, 0), ratio-major, scale-minor, rounded (torchvision's ``generate_anchors``)."""
    scales = np.asarray(sizes, dtype=np.float32)
    aspect = np.asarray(ratios, dtype=np.float32)
    h_ratios = np.sqrt(aspect)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


def anchors_per_level(shapes: Sequence[tuple[int, int]], num_anchors: int) -> list[int]:
    return [h * w * num_anchors for h, w in shapes]


def grid_anchors(cfg: AnchorConfig, padded_size: tuple[int, int]) -> np.ndarray:
    """(sum HWA, 4) XYXY anchors of one image in a batch padded to ``padded_size``, levels P3..P7,
    each level row-major (y, x) then its cell anchors."""
    shapes = level_shapes(*padded_size)
    if cfg.stride_mode == "level":
        strides = [(s, s) for s in LEVEL_STRIDES]
    else:
        strides = [(padded_size[0] // h, padded_size[1] // w) for h, w in shapes]
    levels = []
    for (h, w), (sy, sx), sizes in zip(shapes, strides, cfg.sizes_per_level()):
        base = cell_anchors(sizes, cfg.ratios)
        shift_y, shift_x = np.meshgrid(np.arange(h, dtype=np.int64) * sy, np.arange(w, dtype=np.int64) * sx,
                                       indexing="ij")
        shifts = np.stack([shift_x.ravel(), shift_y.ravel(), shift_x.ravel(), shift_y.ravel()], axis=1)
        levels.append((shifts[:, None, :].astype(np.float32) + base[None, :, :]).reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)
