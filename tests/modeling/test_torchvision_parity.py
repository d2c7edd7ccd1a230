"""With every attention off, HAR-Net loaded with torchvision's RetinaNet weights IS torchvision's RetinaNet.

Proven on ResNet-50 at a tiny input size: the same detections in eval mode (two images of different
sizes, so resizing, padding and box rescaling are covered) and the same losses in train mode (one
image with boxes, one without).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from harnet.modeling.harnet import HARNet
from harnet.modeling.torchvision_compat import (
    load_torchvision_retinanet,
    map_torchvision_key,
    torchvision_retinanet_config,
)

NUM_CLASSES = 5
MIN_SIZE, MAX_SIZE = 128, 160


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, HARNet]:
    """torchvision's RetinaNet (random weights, fixed seed) and a HAR-Net loaded from its state_dict."""
    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES,
        min_size=MIN_SIZE,
        max_size=MAX_SIZE,
        score_thresh=0.0,
    )
    cfg = torchvision_retinanet_config(num_classes=NUM_CLASSES, min_size=MIN_SIZE, max_size=MAX_SIZE)
    cfg.inference.score_thresh = 0.0
    ours = load_torchvision_retinanet(HARNet(cfg), tv.state_dict())
    return tv, ours


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 100, 140, generator=g), torch.rand(3, 150, 90, generator=g)]


def test_eval_detections_equal_torchvision(models: tuple[torch.nn.Module, HARNet]) -> None:
    """Same boxes/scores (atol 1e-4) and labels, image by image, in input-image pixels."""
    tv, ours = models
    tv.eval()
    ours.eval()
    images = _images()
    with torch.no_grad():
        expected = tv(images)
        got = ours(images)
    assert len(got) == len(expected) == 2
    for e, g, img in zip(expected, got, images):
        assert e["boxes"].shape[0] > 0, "the comparison must cover some detections"
        assert g["boxes"].shape == e["boxes"].shape
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
        assert torch.equal(g["labels"], e["labels"])
        h, w = img.shape[-2:]
        assert float(g["boxes"][:, 2].max()) <= w and float(g["boxes"][:, 3].max()) <= h


def test_train_losses_equal_torchvision(models: tuple[torch.nn.Module, HARNet]) -> None:
    """Focal + L1 losses equal torchvision's to 1e-5, with one positive and one empty image."""
    tv, ours = models
    tv.train()
    ours.train()
    images = _images()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0], [50.0, 5.0, 130.0, 60.0]]),
         "labels": torch.tensor([1, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    # Plain BatchNorm updates running statistics in train mode; both models see the same batch once.
    expected = tv(images, [dict(t) for t in targets])
    got = ours(images, [dict(t) for t in targets])
    assert set(got) == set(expected) == {"classification", "bbox_regression"}
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    assert float(got["bbox_regression"].detach()) > 0


def test_unknown_key_raises_key_error() -> None:
    """A key the mapping does not know raises rather than being silently dropped."""
    assert map_torchvision_key("head.classification_head.cls_logits.weight") == (
        "head.predictor.cls_logits.weight"
    )
    with pytest.raises(KeyError, match="unexpected torchvision RetinaNet key"):
        map_torchvision_key("head.some_new_block.weight")
    model = HARNet(torchvision_retinanet_config(num_classes=NUM_CLASSES))
    with pytest.raises(KeyError):
        load_torchvision_retinanet(model, {"roi_heads.box_predictor.weight": torch.zeros(1)})
