"""Losses: torchvision's per-image normalisation (default) and the authors' per-level one."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import sigmoid_focal_loss

from harnet.config.model import LossConfig
from harnet.modeling.losses import DetectionLoss


def _problem() -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor, list[torch.Tensor], list[int]]:
    g = torch.Generator().manual_seed(0)
    per_level = [12, 6]
    anchors = []
    for _ in range(2):
        xy = torch.rand(18, 2, generator=g) * 40
        anchors.append(torch.cat([xy, xy + 10 + torch.rand(18, 2, generator=g) * 10], dim=1))
    targets = [{"boxes": anchors[0][[0, 14]] + 0.5, "labels": torch.tensor([1, 2])},
               {"boxes": anchors[1][[3]] - 0.5, "labels": torch.tensor([0])}]
    logits = torch.randn(2, 18, 3, generator=g)
    deltas = torch.randn(2, 18, 4, generator=g) * 0.1
    return targets, logits, deltas, anchors, per_level


def test_level_normalizer_divides_each_level_by_max_positives_and_100() -> None:
    """The authors' loss layers: per level, the batch's focal and smooth-L1 (sigma 10, beta 0.01) sums over
    max(#positives on the level, 100), then summed over levels."""
    targets, logits, deltas, anchors, per_level = _problem()
    cfg = LossConfig(normalizer="level", smooth_l1_beta=0.01)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    loss = DetectionLoss(cfg, coder)
    matched = loss.match(targets, anchors)
    got = loss(targets, logits, deltas, anchors, matched, per_level)
    cls_expected, box_expected = 0.0, 0.0
    for lo, hi in ((0, 12), (12, 18)):
        cls_sum, box_sum, positives = 0.0, 0.0, 0
        for t, lg, dl, an, m in zip(targets, logits, deltas, anchors, matched):
            m = m[lo:hi]
            fg = m >= 0
            gt = torch.zeros(hi - lo, 3)
            gt[fg, t["labels"][m[fg]]] = 1
            valid = m != -2
            cls_sum += float(sigmoid_focal_loss(lg[lo:hi][valid], gt[valid], 0.25, 2.0, "sum"))
            target_deltas = coder.encode_single(t["boxes"][m[fg]], an[lo:hi][fg])
            box_sum += float(torch.nn.functional.smooth_l1_loss(dl[lo:hi][fg], target_deltas, beta=0.01,
                                                                reduction="sum"))
            positives += int(fg.sum())
        cls_expected += cls_sum / max(positives, 100)
        box_expected += box_sum / max(positives, 100)
    assert float(got["classification"]) == pytest.approx(cls_expected, rel=1e-5)
    assert float(got["bbox_regression"]) == pytest.approx(box_expected, rel=1e-5)
    assert sum(int((m >= 0).sum()) for m in matched) > 0


def test_losses_are_fp32_under_low_precision_inputs() -> None:
    """bf16 head outputs (autocast) are scored in fp32: the loss equals the fp32 loss of the same values."""
    targets, logits, deltas, anchors, _ = _problem()
    loss = DetectionLoss(LossConfig(), BoxCoder((1.0, 1.0, 1.0, 1.0)))
    matched = loss.match(targets, anchors)
    low = loss(targets, logits.bfloat16(), deltas.bfloat16(), anchors, matched)
    ref = loss(targets, logits.bfloat16().float(), deltas.bfloat16().float(), anchors, matched)
    for k in ref:
        assert low[k].dtype == torch.float32
        torch.testing.assert_close(low[k], ref[k])
