"""Aligned attention: a zero-offset deformable bottleneck added residually to C5 (and C4)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from harnet.config.model import BackboneConfig, HARNetConfig
from harnet.modeling.attention.aligned import DeformableBottleneck
from harnet.modeling.harnet import HARNet


def _block(in_channels: int = 32) -> DeformableBottleneck:
    torch.manual_seed(0)
    return DeformableBottleneck(in_channels, mid_channels=16, gn_groups=4)


def test_zero_offsets_make_deform_conv_a_plain_conv() -> None:
    """At init the offsets are exactly zero, so the deformable conv equals F.conv2d with its weight."""
    block = _block()
    y = block.reduce(torch.randn(2, 32, 6, 7))
    offsets = block.offset(y)
    assert offsets.shape == (2, 4 * 2 * 9, 6, 7)
    assert bool((offsets == 0).all())
    plain = F.conv2d(y, block.deform.weight, padding=1)
    torch.testing.assert_close(block.deform(y, offsets), plain, atol=1e-5, rtol=1e-5)
    # And the offsets are really used: a half-pixel shift changes the output.
    assert not torch.allclose(block.deform(y, offsets + 0.5), plain, atol=1e-4)


def test_bottleneck_adds_the_residual_branch_to_its_input() -> None:
    """out - x == ReLU(GN(1x1(ReLU(GN(deform(ReLU(GN(1x1(x))))))))), with the last GN's scale at 0.1: the
    authors' branch ends in ``fpn_relu5_1c`` / ``fpn_relu4_1c`` before the Eltwise SUM, so it only adds."""
    block = _block()
    x = torch.randn(2, 32, 5, 5)
    y = block.reduce(x)
    y = F.relu(block.deform_norm(F.conv2d(y, block.deform.weight, padding=1)))
    branch = block.expand_norm(block.expand(y))
    torch.testing.assert_close(block(x) - x, F.relu(branch), atol=1e-5, rtol=1e-4)
    assert bool((block.expand_norm.weight == 0.1).all())
    assert branch.min() < 0 < branch.max()  # the ReLU really cuts something
    assert bool((block(x) >= x - 1e-6).all())
    legacy = DeformableBottleneck(32, mid_channels=16, gn_groups=4, out_relu=False)
    legacy.load_state_dict(block.state_dict())
    torch.testing.assert_close(legacy(x) - x, branch, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("channels", "groups"), [(112, 28), (320, 32), (40, 20), (256, 32), (7, 7)])
def test_group_norm_groups_divide_any_channel_count(channels: int, groups: int) -> None:
    """Lite0's C4 has 112 channels, not divisible by 32: the block takes the largest divisor <= 32."""
    block = DeformableBottleneck(channels, mid_channels=64, gn_groups=32)
    assert block.expand_norm.num_groups == groups
    assert block(torch.randn(1, channels, 4, 4)).shape == (1, channels, 4, 4)


def test_c4_and_c5_blocks_on_efficientnet_lite0() -> None:
    """The hybrid's C4 + C5 blocks (the authors' ``fpn_conv4_1a`` and ``fpn_conv5_1a``) on every body we
    ship: EfficientNet-Lite0's C4 (112 channels) used to fail with 'num_channels must be divisible'."""
    pytest.importorskip("timm")
    cfg = HARNetConfig.preset("hybrid", num_classes=2, backbone=BackboneConfig("efficientnet_lite0", "bn", 5))
    cfg.fpn.channels, cfg.aligned.mid_channels = 32, 32
    cfg.transform.min_size, cfg.transform.max_size = (64,), 64
    model = HARNet(cfg).eval()
    assert list(model.aligned) == ["c4", "c5"] and model.aligned["c4"].expand_norm.num_groups == 28
    with torch.no_grad():
        assert len(model([torch.rand(3, 64, 64)])) == 1


def test_offset_conv_parameter_names_match_the_default_lr_override() -> None:
    """The authors' 0.1x lr reaches the offset predictor by name (``TrainConfig.param_overrides``), so its
    parameters must keep the names the default pattern matches, and nothing else of the block may match."""
    from fnmatch import fnmatchcase

    from harnet.config.experiment import TrainConfig

    cfg = HARNetConfig.preset("hybrid", num_classes=2, backbone=BackboneConfig("resnet18", "bn", 5))
    names = [n for n, _ in HARNet(cfg).named_parameters() if n.startswith("aligned.")]
    (pattern,) = [o.pattern for o in TrainConfig().param_overrides]
    assert [n for n in names if fnmatchcase(n, pattern)] == [
        "aligned.c4.offset.weight", "aligned.c4.offset.bias", "aligned.c5.offset.weight", "aligned.c5.offset.bias"]


@pytest.mark.parametrize("stages", [("c5",), ("c4", "c5")])
def test_model_changes_only_the_configured_stages(stages: tuple[str, ...]) -> None:
    """The FPN receives backbone C3 untouched, and C4/C5 replaced by block(C) iff configured."""
    torch.manual_seed(0)
    cfg = HARNetConfig.preset("aligned", num_classes=3, backbone=BackboneConfig("resnet18", "bn", 5))
    cfg.aligned.stages = stages  # type: ignore[assignment]
    cfg.aligned.mid_channels = 32
    model = HARNet(cfg).eval()
    assert list(model.aligned) == list(stages)
    seen: list[OrderedDict[str, torch.Tensor]] = []
    model.fpn.register_forward_pre_hook(lambda _m, args: seen.append(OrderedDict(args[0])))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c = model.backbone(images)
        model.features(images)
        fpn_in = seen[0]
        assert torch.equal(fpn_in["c3"], c["c3"])
        for stage in ("c4", "c5"):
            if stage in stages:
                assert not torch.allclose(fpn_in[stage], c[stage], atol=1e-4), stage
                torch.testing.assert_close(fpn_in[stage], model.aligned[stage](c[stage]))
            else:
                assert torch.equal(fpn_in[stage], c[stage]), stage
