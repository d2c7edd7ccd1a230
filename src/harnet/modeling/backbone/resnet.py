"""Backbone bodies returning C3, C4, C5 (strides 8, 16, 32): torchvision's ResNets here,
EfficientNet-Lite0 (timm) in :mod:`harnet.modeling.backbone.efficientnet`; ``build_backbone`` picks one."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision import models
from torchvision.ops.misc import FrozenBatchNorm2d

from harnet.config.model import BackboneConfig
from harnet.modeling.backbone.pretrained import IMAGENET, load_state_file, torchvision_imagenet_state, widen_input_conv
from harnet.utils.compat import IntermediateLayerGetter

_BUILDERS = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
    "resnet101": models.resnet101,
    "resnext50_32x4d": models.resnext50_32x4d,
}
_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


class ResNetBackbone(nn.Module):
    """torchvision ResNet up to layer4, exposing ``c3``, ``c4``, ``c5``.

    The stem and the lowest stages can be frozen (``trainable_layers``) as in Detectron; frozen
    BatchNorm keeps pretrained statistics fixed when batches are tiny. ``in_channels`` other than 3 adapt the
    RGB stem, pretrained or freshly initialised (:func:`~harnet.modeling.backbone.pretrained.widen_input_conv`).
    """

    def __init__(self, cfg: BackboneConfig, in_channels: int = 3) -> None:
        super().__init__()
        if cfg.name not in _BUILDERS:
            raise ValueError(f"unknown backbone {cfg.name!r}; choose one of {', '.join(_BUILDERS)}")
        if not 0 <= cfg.trainable_layers <= 5:
            raise ValueError(f"backbone.trainable_layers must be in 0..5, got {cfg.trainable_layers}")
        norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
        resnet = _BUILDERS[cfg.name](weights=None, norm_layer=norm_layer)
        if cfg.weights:
            state = torchvision_imagenet_state(cfg.name) if cfg.weights == IMAGENET else load_state_file(cfg.weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = resnet.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:  # e.g. a detector checkpoint: keys prefixed, nothing loaded
                raise ValueError(
                    f"backbone.weights {cfg.weights!r} is not a {cfg.name} state_dict: "
                    f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        if in_channels != 3:
            widen_input_conv(resnet.conv1, in_channels)
        trainable = _STAGES[: cfg.trainable_layers]
        if cfg.trainable_layers == 5:
            trainable += ("bn1",)  # the stem is conv1 + bn1; torchvision trains both at 5
        for name, param in resnet.named_parameters():
            if not name.startswith(trainable):
                param.requires_grad_(False)
        self.body = IntermediateLayerGetter(resnet, {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
        width = 512 if cfg.name in ("resnet18", "resnet34") else 2048
        self.out_channels = {"c3": width // 4, "c4": width // 2, "c5": width}

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.body(images)


def build_backbone(cfg: BackboneConfig, in_channels: int = 3) -> nn.Module:
    """The body named by ``cfg.name`` reading ``in_channels`` channels (``model.input.channels``); it has
    ``out_channels`` ({"c3", "c4", "c5"} -> channels)."""
    if cfg.name == "efficientnet_lite0":
        from harnet.modeling.backbone.efficientnet import EfficientNetLite0Backbone  # imports timm only when used

        return EfficientNetLite0Backbone(cfg, in_channels)
    return ResNetBackbone(cfg, in_channels)
