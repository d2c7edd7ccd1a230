"""Anchors: the paper's 6 per location (4 x stride x {1, sqrt 2}) and torchvision's 9 integer-sized ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from harnet.config.model import AnchorConfig
from harnet.modeling.anchors import anchors_per_level, build_anchor_generator
from harnet.modeling.pyramid import level_shapes

STRIDES = (8, 16, 32, 64, 128)


def _anchors(cfg: AnchorConfig, size: int = 128) -> list[torch.Tensor]:
    """Anchors of one size x size image, split per level (P3..P7)."""
    images = ImageList(torch.zeros(1, 3, size, size), [(size, size)])
    feats = [torch.zeros(1, 8, size // s, size // s) for s in STRIDES]
    anchors = build_anchor_generator(cfg)(images, feats)[0]
    return list(anchors.split([(size // s) ** 2 * cfg.num_anchors for s in STRIDES]))


def test_paper_default_is_six_anchors_of_4_stride_times_1_and_sqrt2() -> None:
    """AnchorConfig() = 3 ratios x sizes {4s, 4s*sqrt2} per level; widths and heights as specified."""
    cfg = AnchorConfig()
    assert cfg.num_anchors == 6
    for stride, sizes in zip(STRIDES, cfg.sizes_per_level()):
        assert sizes == (4 * stride, 4 * stride * math.sqrt(2))
    for stride, level in zip(STRIDES, _anchors(cfg, 256)):
        first = level[: cfg.num_anchors]  # the 6 anchors of location (0, 0)
        w, h = first[:, 2] - first[:, 0], first[:, 3] - first[:, 1]
        torch.testing.assert_close((first[:, :2] + first[:, 2:]) / 2, torch.zeros(6, 2), atol=1e-4, rtol=0)
        # ratio-major, scale-minor: (0.5, s1), (0.5, s2), (1, s1), (1, s2), (2, s1), (2, s2).
        sizes = torch.tensor([4.0 * stride, 4.0 * stride * math.sqrt(2)] * 3)
        ratios = torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0])
        # torchvision rounds each base anchor's corners to integers: within 1 px of the ideal size
        # (the 4*8*sqrt2 = 45.25 px anchor of P3 comes out 46 x 46).
        assert bool((first == first.round()).all())
        torch.testing.assert_close(w, sizes / ratios.sqrt(), atol=1.0, rtol=0)
        torch.testing.assert_close(h, sizes * ratios.sqrt(), atol=1.0, rtol=0)
        # Next location along x is one stride further.
        step = level[cfg.num_anchors : 2 * cfg.num_anchors] - first
        torch.testing.assert_close(step, torch.tensor([stride, 0.0, stride, 0.0]).expand(6, 4))


def test_retinanet_anchors_are_torchvisions() -> None:
    """AnchorConfig.retinanet(): 9 per location, integer sizes (32, 40, 50) at P3, equal anchors."""
    cfg = AnchorConfig.retinanet()
    assert cfg.num_anchors == 9
    per_level = cfg.sizes_per_level()
    assert per_level[0] == (32, 40, 50)
    bases = (32, 64, 128, 256, 512)
    assert per_level == tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in bases)
    images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    feats = [torch.zeros(1, 8, 128 // s, 128 // s) for s in STRIDES]
    expected = _default_anchorgen()(images, feats)[0]
    got = build_anchor_generator(cfg)(images, feats)[0]
    assert torch.equal(got, expected)


def test_anchor_centres_sit_at_the_level_stride_for_any_padded_size() -> None:
    """The authors' anchors sit at exact multiples of 2^level. A 400 px image pads to 416 (32 | 416, 128 does
    not), P6 gets a 7-cell grid and P7 a 4-cell one: centres must still step by 64 and 128, where
    torchvision's padded-size // grid-size gives 59 and 104 (kept as ``stride_mode: torchvision``)."""
    cfg = AnchorConfig()
    size = 416
    grids = [-(-size // s) for s in STRIDES]  # 52, 26, 13, 7, 4: what the convs produce
    images = ImageList(torch.zeros(1, 3, size, size), [(400, 400)])
    feats = [torch.zeros(1, 8, g, g) for g in grids]
    counts = [g * g * cfg.num_anchors for g in grids]
    for stride, grid, level in zip(STRIDES, grids, build_anchor_generator(cfg)(images, feats)[0].split(counts)):
        centres = ((level[:, :2] + level[:, 2:]) / 2).view(grid, grid, cfg.num_anchors, 2)
        expected = torch.arange(grid, dtype=torch.float32) * stride
        torch.testing.assert_close(centres[0, :, 0, 0], expected, atol=0.5, rtol=0)  # x along the first row
        torch.testing.assert_close(centres[:, 0, 0, 1], expected, atol=0.5, rtol=0)  # y down the first column
    legacy = build_anchor_generator(AnchorConfig(stride_mode="torchvision"))(images, feats)[0].split(counts)
    p7 = ((legacy[4][:, :2] + legacy[4][:, 2:]) / 2).view(4, 4, cfg.num_anchors, 2)
    assert float(p7[0, 1, 0, 0] - p7[0, 0, 0, 0]) == 104.0  # torchvision's 416 // 4


def _reference_anchors(cfg: AnchorConfig, images: ImageList, feats: list[torch.Tensor]) -> torch.Tensor:
    """The anchors as built before ``stride_mode``: torchvision's generator, with the level strides
    passed to ``grid_anchors`` for the level rule (the former ``LevelStrideAnchorGenerator``)."""
    sizes = cfg.sizes_per_level()
    generator = AnchorGenerator(sizes, (tuple(cfg.ratios),) * len(sizes))
    if cfg.stride_mode == "torchvision":
        return generator(images, feats)[0]
    generator.set_cell_anchors(torch.float32, torch.device("cpu"))
    strides = [[torch.tensor(s), torch.tensor(s)] for s in STRIDES]
    return torch.cat(generator.grid_anchors([f.shape[-2:] for f in feats], strides))


@pytest.mark.parametrize("mode", ["level", "torchvision"])
@pytest.mark.parametrize("cfg", [AnchorConfig(), AnchorConfig.retinanet()], ids=["paper", "retinanet"])
@pytest.mark.parametrize(("height", "width"), [(128, 128), (416, 352), (96, 160)])
def test_anchors_are_unchanged_and_grid_needs_only_the_geometry(cfg: AnchorConfig, mode: str, height: int,
                                                                width: int) -> None:
    """Both stride rules give exactly the anchors of before; ``grid`` from ``level_shapes`` of the padded
    size (what export uses, no feature maps) equals ``forward`` on real-shaped feature maps."""
    cfg = replace(cfg, stride_mode=mode)
    images = ImageList(torch.zeros(2, 3, height, width), [(height - 5, width), (height, width - 7)])
    shapes = level_shapes(height, width)
    feats = [torch.zeros(2, 8, h, w) for h, w in shapes]
    generator = build_anchor_generator(cfg)
    got = generator(images, feats)
    assert len(got) == 2 and torch.equal(got[0], got[1])
    assert torch.equal(got[0], _reference_anchors(cfg, images, feats))
    assert all(torch.equal(a, b) for a, b in zip(generator.grid((height, width), shapes, 2), got))
    assert sum(anchors_per_level(shapes, cfg.num_anchors)) == got[0].shape[0]
