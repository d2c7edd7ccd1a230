"""Folding eval-mode BatchNorms into convs keeps every output, and folds only real conv -> norm pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from harnet.config.model import BackboneConfig
from harnet.modeling.backbone.resnet import ResNetBackbone
from harnet.modeling.fold_bn import fold_batch_norms, is_affine_batch_norm

TOL = 1e-4  # float32 rounding after combining the affine in float64


def _randomise_norms(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if is_affine_batch_norm(m):
            for name in ("weight", "bias", "running_mean"):
                getattr(m, name).copy_(torch.randn(getattr(m, name).shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_resnet_folded_equals_plain(norm: str) -> None:
    body = ResNetBackbone(BackboneConfig(name="resnet18", norm=norm, weights=None)).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        _randomise_norms(body)
        x = torch.randn(1, 3, 64, 64)
        plain = body(x)
        assert fold_batch_norms(body, x) == 20  # stem + 16 block convs + 3 downsamples
        folded = body(x)
    assert not any(is_affine_batch_norm(m) for m in body.modules())
    for key in plain:
        assert torch.allclose(folded[key], plain[key], atol=TOL * float(plain[key].abs().max()), rtol=0)


def test_efficientnet_folded_keeps_activation() -> None:
    pytest.importorskip("timm")
    from harnet.modeling.backbone.efficientnet import EfficientNetLite0Backbone

    body = EfficientNetLite0Backbone(BackboneConfig(name="efficientnet_lite0", weights=None)).eval()
    with torch.no_grad():
        _randomise_norms(body)
        x = torch.randn(1, 3, 64, 64)
        plain = body(x)
        assert fold_batch_norms(body, x) > 0
        folded = body(x)
    assert any(isinstance(m, nn.ReLU6) for m in body.modules())  # timm's norm+act keeps its activation
    for key in plain:
        assert torch.allclose(folded[key], plain[key], atol=TOL * float(plain[key].abs().max()), rtol=0)


class _NormBeforeConv(nn.Module):
    """Declares conv then norm but applies the norm to the input: nothing may be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = FrozenBatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class _SharedConvOutput(nn.Module):
    """The conv's output feeds the norm and another module: folding would change the other one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = FrozenBatchNorm2d(3)
        self.other = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + self.other(y)


@pytest.mark.parametrize("model", [_NormBeforeConv(), _SharedConvOutput()])
def test_only_data_flow_pairs_fold(model: nn.Module) -> None:
    assert fold_batch_norms(model.eval(), torch.randn(1, 3, 4, 4)) == 0


def test_training_batch_norm_is_not_folded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)).train()
    assert fold_batch_norms(model, torch.randn(2, 3, 4, 4)) == 0
