"""Parameter and FLOP counts, including torchvision's deformable conv (a custom op)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import harnet.utils.complexity as complexity
from harnet.config.model import BackboneConfig, HARNetConfig
from harnet.modeling.harnet import HARNet
from harnet.utils.complexity import count_flops, count_parameters, deform_conv2d_flops

SIZE = 128
MID = 32


def _model(preset: str, **backbone: Any) -> HARNet:
    torch.manual_seed(0)
    bb = BackboneConfig("resnet18", **{"norm": "bn", "trainable_layers": 5, **backbone})
    cfg = HARNetConfig.preset(preset, num_classes=3, backbone=bb)
    cfg.fpn.channels = 32
    cfg.channel.gn_groups = 8
    cfg.aligned.mid_channels = MID
    return HARNet(cfg)


def _aligned_block_flops(c5: int, h: int, w: int) -> int:
    """2 * MACs of the C5 bottleneck: 1x1 reduce, 3x3 offset conv (72 ch), 3x3 deformable, 1x1 expand."""
    hw = h * w
    return 2 * hw * (c5 * MID + MID * 72 * 9 + MID * MID * 9 + MID * c5)


def test_parameter_counts_split_by_part() -> None:
    """total = backbone + aligned + fpn + head; frozen stages reduce only ``trainable``."""
    model = _model("aligned")
    counts = count_parameters(model)
    assert counts["total"] == sum(counts[p] for p in ("backbone", "aligned", "fpn", "head"))
    assert counts["trainable"] == counts["total"]
    assert counts["aligned"] == sum(p.numel() for p in model.aligned.parameters()) > 0
    assert count_parameters(_model("retinanet"))["aligned"] == 0
    frozen = count_parameters(_model("aligned", norm="frozen_bn", trainable_layers=3))
    assert frozen["total"] < counts["total"]  # FrozenBatchNorm2d holds buffers, not parameters
    assert 0 < frozen["trainable"] < frozen["total"]


def test_retinanet_flops_positive_and_stable() -> None:
    """A positive GFLOPs figure, identical on a second call; the model's train mode and BN stats kept."""
    model = _model("retinanet").train()
    stats = model.backbone.body.bn1.running_mean.clone()
    first = count_flops(model, SIZE)
    assert first > 0
    assert count_flops(model, SIZE) == first
    assert model.training and torch.equal(model.backbone.body.bn1.running_mean, stats)


def test_aligned_adds_exactly_the_bottleneck_including_deform_conv() -> None:
    """aligned - retinanet = exactly the bottleneck's convs, the deformable one counted by its
    2*N*Cout*H*W*Cin*k*k formula."""
    retina = count_flops(_model("retinanet"), SIZE)
    aligned = count_flops(_model("aligned"), SIZE)
    deform = deform_conv2d_flops(None, (MID, MID, 3, 3), out_shape=(1, MID, SIZE // 32, SIZE // 32))
    assert deform == 2 * MID * (SIZE // 32) ** 2 * MID * 9
    assert (aligned - retina) * 1e9 >= deform
    assert round((aligned - retina) * 1e9) == _aligned_block_flops(512, SIZE // 32, SIZE // 32)


def test_hook_fallback_when_custom_mapping_is_unsupported(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``custom_mapping`` (old torch) the forward-hook fallback gives the same count."""
    model = _model("aligned")
    expected = count_flops(model, SIZE)
    real = complexity.FlopCounterMode

    def old_counter(*args: Any, custom_mapping: Any = None, **kwargs: Any) -> Any:
        if custom_mapping is not None:
            raise TypeError("__init__() got an unexpected keyword argument 'custom_mapping'")
        return real(*args, **kwargs)

    monkeypatch.setattr(complexity, "FlopCounterMode", old_counter)
    assert count_flops(model, SIZE) == expected
    monkeypatch.setattr(complexity, "_deform_op", lambda: None)
    assert count_flops(model, SIZE) == expected
