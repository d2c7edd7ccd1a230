"""The sampled deformable conv equals torchvision's, and the aligned block picks it only without autograd."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import DeformConv2d, deform_conv2d

from harnet.modeling.attention import deform_sampling
from harnet.modeling.attention.aligned import DeformableBottleneck
from harnet.modeling.attention.deform_sampling import deform_conv, deform_conv2d_sampled, use_sampling
from harnet.utils.complexity import count_flops

TOL = 1e-4  # float32 rounding of a 3x3xC sum; measured differences are ~1e-6


@pytest.mark.parametrize(("groups", "stride", "padding", "dilation", "size"),
                         [(1, 1, 1, 1, (7, 9)), (4, 1, 1, 1, (6, 6)), (2, 2, 2, 2, (9, 8)),
                          (1, 1, 1, 1, (1, 5)), (1, 1, 0, 1, (4, 5))])
def test_matches_torchvision(groups: int, stride: int, padding: int, dilation: int, size: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, *size, generator=g)
    weight = torch.randn(6, 8, 3, 3, generator=g)
    bias = torch.randn(6, generator=g)
    h_out = (size[0] + 2 * padding - dilation * 2 - 1) // stride + 1
    w_out = (size[1] + 2 * padding - dilation * 2 - 1) // stride + 1
    # Offsets large enough to send samples outside the image, where corners count as zero.
    offset = torch.randn(2, 2 * groups * 9, h_out, w_out, generator=g) * 3
    expected = deform_conv2d(x, offset, weight, bias, stride, padding, dilation)
    got = deform_conv2d_sampled(x, offset, weight, bias, stride, padding, dilation)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)


def test_used_only_without_autograd() -> None:
    x = torch.zeros(1, 2, 3, 3)
    assert not use_sampling(x)
    with torch.no_grad():
        assert use_sampling(x)
    with torch.inference_mode():
        assert use_sampling(x)


def test_aligned_block_same_output_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    block = DeformableBottleneck(32, mid_channels=16, deform_groups=2, gn_groups=4).eval()
    torch.nn.init.normal_(block.offset.weight, std=0.5)  # non-zero offsets: real deformable sampling
    x = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        sampled, offsets = block.forward_with_offsets(x)
        monkeypatch.setattr(deform_sampling, "use_sampling", lambda t: False)
        plain, _ = block.forward_with_offsets(x)
    assert offsets.abs().max() > 0.5
    assert torch.allclose(sampled, plain, atol=TOL, rtol=0)


def test_grouped_weights_keep_torchvision() -> None:
    conv = DeformConv2d(4, 4, 3, padding=1, groups=2)
    x, offset = torch.randn(1, 4, 5, 5), torch.zeros(1, 18, 5, 5)
    with torch.no_grad():
        assert torch.equal(deform_conv(conv, x, offset), conv(x, offset))


def test_flop_count_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FLOP count sees the sampled path's matmul as the same multiply-adds as torchvision's op."""
    from harnet.config.model import HARNetConfig
    from harnet.modeling.harnet import build_harnet

    cfg = HARNetConfig.preset("aligned", num_classes=2)
    cfg.backbone.name = "resnet18"  # type: ignore[assignment]
    cfg.fpn.channels = 16
    cfg.aligned.mid_channels = 16
    model = build_harnet(cfg)
    sampled = count_flops(model, 64)
    monkeypatch.setattr(deform_sampling, "use_sampling", lambda t: False)
    assert count_flops(model, 64) == pytest.approx(sampled, rel=1e-9)
