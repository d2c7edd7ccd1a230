"""Bridge to torchvision's RetinaNet: a matching config and a state_dict key mapping.

With attentions off, HAR-Net *is* RetinaNet. Loading torchvision's weights and getting torchvision's
outputs and losses back (tests/modeling/test_torchvision_parity.py) is how we know.
"""

from __future__ import annotations

import re

from torch import Tensor

from harnet.config.model import (
    AnchorConfig,
    BackboneConfig,
    FPNConfig,
    HARNetConfig,
    InferenceConfig,
    LossConfig,
    TransformConfig,
)
from harnet.modeling.harnet import HARNet

# (torchvision key pattern, our key template), tried in order.
_KEY_MAP = (
    (re.compile(r"^backbone\.body\.(.*)$"), r"backbone.body.\1"),
    (re.compile(r"^backbone\.fpn\.(.*)$"), r"fpn.\1"),
    (re.compile(r"^head\.classification_head\.conv\.(\d+)\.0\.(.*)$"), r"head.cls_tower.convs.\1.\2"),
    (re.compile(r"^head\.regression_head\.conv\.(\d+)\.0\.(.*)$"), r"head.box_tower.convs.\1.\2"),
    (re.compile(r"^head\.classification_head\.cls_logits\.(.*)$"), r"head.predictor.cls_logits.\1"),
    (re.compile(r"^head\.regression_head\.bbox_reg\.(.*)$"), r"head.predictor.bbox_reg.\1"),
)


def torchvision_retinanet_config(
    num_classes: int = 91,
    min_size: int = 800,
    max_size: int = 1333,
    backbone_norm: str = "bn",
    trainable_layers: int = 5,
) -> HARNetConfig:
    """The settings of ``retinanet_resnet50_fpn``: 9 integer-sized anchors, P6 from P5, L1 box
    loss, hard NMS, up to 300 detections. Without backbone weights torchvision uses plain BatchNorm and trains all
    layers (the defaults here); with ImageNet weights it uses frozen BN and 3 trainable layers."""
    return HARNetConfig(
        num_classes=num_classes,
        backbone=BackboneConfig("resnet50", norm=backbone_norm, trainable_layers=trainable_layers),  # type: ignore[arg-type]
        fpn=FPNConfig(channels=256, p6_from="p5"),
        anchors=AnchorConfig.retinanet(),
        loss=LossConfig(box_loss="l1"),
        inference=InferenceConfig(detections_per_img=300),
        transform=TransformConfig(min_size=(min_size,), max_size=max_size),
    )


def map_torchvision_key(key: str) -> str:
    """torchvision RetinaNet state_dict key -> HARNet key (raises on keys we do not know)."""
    for pattern, template in _KEY_MAP:
        if pattern.match(key):
            return pattern.sub(template, key)
    raise KeyError(f"unexpected torchvision RetinaNet key {key!r}")


def load_torchvision_retinanet(model: HARNet, state_dict: dict[str, Tensor]) -> HARNet:
    """Load a ``torchvision.models.detection.retinanet_resnet50_fpn`` state_dict into ``model``.

    The model must be a RetinaNet-shaped HARNet (attentions off, same anchors/classes), e.g. built
    from :func:`torchvision_retinanet_config`. Every key must match: a missing or unexpected key
    raises rather than leaving weights silently at their initial values.
    """
    mapped = {map_torchvision_key(k): v for k, v in state_dict.items()}
    model.load_state_dict(mapped, strict=True)
    return model
