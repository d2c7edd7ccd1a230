"""Spatial attention: one sigmoid mask per level from dilated convs 1-2-5-2-1, re-weighting both towers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harnet.config.model import HARNetConfig
from harnet.modeling.attention.spatial import SpatialAttention
from harnet.modeling.harnet import build_head

SIZES = ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))


def _levels(c: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, c, h, w, generator=g) for h, w in SIZES]


def _rates(net: nn.Sequential) -> list[int]:
    return [m.dilation[0] for m in net if isinstance(m, nn.Conv2d)]


def test_one_mask_per_level_in_unit_interval() -> None:
    """Five masks of shape (N, 1, H_l, W_l), strictly inside (0, 1), not all equal."""
    torch.manual_seed(0)
    sa = SpatialAttention(16, 5)
    for net in sa.levels:  # larger weights than the 0.01 init so that masks vary visibly
        for m in net:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.3)
    levels = _levels()
    masks = sa.masks(levels)
    assert len(masks) == 5
    for x, m in zip(levels, masks):
        assert m.shape == (2, 1, *x.shape[-2:])
        assert bool(((m > 0) & (m < 1)).all())
    assert masks[0].std() > 0
    assert len({id(net) for net in sa.levels}) == 5  # levels do not share weights


def test_dilation_rates_are_symmetric_1_2_5_2_1() -> None:
    """Four 16-ch dilated convs (1, 2, 5, 2) with GN(4) + ReLU, then a 1-ch conv at rate 1."""
    sa = SpatialAttention(16, 5)
    for net in sa.levels:
        assert _rates(net) == [1, 2, 5, 2, 1]
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        assert all(c.padding == c.dilation for c in convs)  # same-size output
        assert [c.out_channels for c in convs] == [16, 16, 16, 16, 1]
        norms = [m for m in net if isinstance(m, nn.GroupNorm)]
        assert len(norms) == 4 and all(n.num_groups == 4 for n in norms)
    no_gn = SpatialAttention(16, 5, gn_groups=None)
    assert not any(isinstance(m, nn.GroupNorm) for m in no_gn.modules())


def test_coarse_rates_apply_to_p6_p7_only() -> None:
    """coarse_rates=(1, 2, 3, 2) changes the rates of levels 3 and 4 (P6, P7) only."""
    sa = SpatialAttention(16, 5, coarse_rates=(1, 2, 3, 2))
    assert [_rates(net) for net in sa.levels] == [[1, 2, 5, 2, 1]] * 3 + [[1, 2, 3, 2, 1]] * 2


@pytest.mark.parametrize("mode", ["mul", "residual"])
def test_reweight_modes(mode: str) -> None:
    """``mul`` gives f * m, ``residual`` gives f * (1 + m)."""
    sa = SpatialAttention(16, 5, mode=mode)
    feats = _levels(seed=1)
    masks = [torch.rand(2, 1, *f.shape[-2:]) for f in feats]
    for f, m, y in zip(feats, masks, sa.reweight(feats, masks)):
        torch.testing.assert_close(y, f * m if mode == "mul" else f * (1 + m))


@pytest.mark.parametrize("mode", ["mul", "residual"])
def test_head_applies_the_same_mask_to_both_towers(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the masks patched to known tensors, the predictor sees cls_tower * m and box_tower * m."""
    torch.manual_seed(0)
    cfg = HARNetConfig.preset("spatial", num_classes=3)
    cfg.fpn.channels = 16
    cfg.spatial.mode = mode  # type: ignore[assignment]
    head = build_head(cfg)
    features = _levels(seed=2)
    known = [torch.rand(2, 1, *f.shape[-2:], generator=torch.Generator().manual_seed(i))
             for i, f in enumerate(features)]
    seen_features: list[list[torch.Tensor]] = []

    def fake_masks(self: SpatialAttention, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        seen_features.append(feats)
        return known

    monkeypatch.setattr(SpatialAttention, "masks", fake_masks)
    inputs: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    head.predictor.register_forward_pre_hook(lambda _m, args: inputs.append(args))
    with torch.no_grad():
        head(features)
        cls_t = head.cls_tower([f.clone() for f in features])
        box_t = head.box_tower([f.clone() for f in features])
    assert len(seen_features) == 1 and all(a is b for a, b in zip(seen_features[0], features))
    cls_in, box_in = inputs[0]
    for m, c, b, ci, bi in zip(known, cls_t, box_t, cls_in, box_in):
        factor = m if mode == "mul" else 1 + m
        torch.testing.assert_close(ci, c * factor)
        torch.testing.assert_close(bi, b * factor)
