"""Backbone: C3/C4/C5 at strides 8/16/32, stage freezing as torchvision's, frozen vs plain BN, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models
from torchvision.ops.misc import FrozenBatchNorm2d

from harnet.config.model import BackboneConfig
from harnet.modeling.backbone.resnet import ResNetBackbone, build_backbone


@pytest.mark.parametrize(
    ("name", "channels"), [("resnet18", (128, 256, 512)), ("resnet50", (512, 1024, 2048))]
)
def test_output_channels_and_strides(name: str, channels: tuple[int, int, int]) -> None:
    """c3, c4, c5 have the advertised channels and strides 8, 16, 32 on a 64x96 input."""
    backbone = ResNetBackbone(BackboneConfig(name, norm="frozen_bn")).eval()
    assert backbone.out_channels == dict(zip(("c3", "c4", "c5"), channels))
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert list(out) == ["c3", "c4", "c5"]
    for (key, x), c, stride in zip(out.items(), channels, (8, 16, 32)):
        assert x.shape == (1, c, 64 // stride, 96 // stride), key


@pytest.mark.parametrize(
    ("k", "trained"),
    [
        (0, set()),
        (1, {"layer4"}),
        (3, {"layer4", "layer3", "layer2"}),
        (5, {"layer4", "layer3", "layer2", "layer1", "conv1", "bn1"}),
    ],
)
def test_trainable_layers_freeze_the_right_parameters(k: int, trained: set[str]) -> None:
    """trainable_layers=k trains the top k stages (torchvision's rule; k=5 includes the stem's bn1)."""
    backbone = ResNetBackbone(BackboneConfig("resnet18", norm="bn", trainable_layers=k))
    for name, p in backbone.body.named_parameters():
        assert p.requires_grad == (name.split(".")[0] in trained), name


def test_frozen_bn_vs_bn() -> None:
    """norm='frozen_bn' uses FrozenBatchNorm2d everywhere (no BatchNorm2d); 'bn' uses BatchNorm2d."""
    frozen = ResNetBackbone(BackboneConfig("resnet18", norm="frozen_bn"))
    kinds = {type(m) for m in frozen.modules()}
    assert FrozenBatchNorm2d in kinds and nn.BatchNorm2d not in kinds
    plain = ResNetBackbone(BackboneConfig("resnet18", norm="bn"))
    kinds = {type(m) for m in plain.modules()}
    assert nn.BatchNorm2d in kinds and FrozenBatchNorm2d not in kinds


def test_bad_config_raises() -> None:
    """Unknown names and out-of-range trainable_layers are ValueErrors."""
    with pytest.raises(ValueError, match="unknown backbone"):
        ResNetBackbone(BackboneConfig("vgg16"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trainable_layers"):
        ResNetBackbone(BackboneConfig("resnet18", trainable_layers=6))


def test_weights_are_loaded_and_wrong_files_rejected(tmp_path: Path) -> None:
    """A torchvision ResNet state_dict (fc included) loads exactly; a prefixed one raises."""
    torch.manual_seed(1)
    reference = models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone(BackboneConfig("resnet18", norm="frozen_bn", weights=str(path)))
    ours = backbone.body.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(ours[key], value), key
    bad = tmp_path / "prefixed.pth"
    torch.save({f"backbone.body.{k}": v for k, v in reference.state_dict().items()}, bad)
    with pytest.raises(ValueError, match="not a resnet18 state_dict"):
        ResNetBackbone(BackboneConfig("resnet18", weights=str(bad)))


def test_imagenet_weights_come_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """weights='imagenet' reads torchvision's default file from the torch hub cache (no download)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    torch.manual_seed(2)
    reference = models.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / Path(models.ResNet18_Weights.DEFAULT.url).name)
    backbone = ResNetBackbone(BackboneConfig("resnet18", norm="frozen_bn", weights="imagenet"))
    assert torch.equal(backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)


def test_imagenet_weights_without_network_fail_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached file and no network: a one-line RuntimeError naming the URL and the offline fix."""
    import urllib.error

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"cannot download .*resnet18-f37072fd\.pth.*copy that file to") as e:
        ResNetBackbone(BackboneConfig("resnet18", weights="imagenet"))
    assert "\n" not in str(e.value)


def test_build_backbone_picks_the_resnet() -> None:
    assert isinstance(build_backbone(BackboneConfig("resnet18")), ResNetBackbone)


def test_adapt_input_conv_as_timm() -> None:
    """One channel sums the RGB filters; more cycle R, G, B, R, ... scaled by 3/N (for 1 channel and multiples of 3
    an input equal in every channel gives the RGB filters' response); 3 channels are left as they are."""
    from harnet.modeling.backbone.pretrained import adapt_input_conv

    weight = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    assert adapt_input_conv(weight, 3) is weight
    four = adapt_input_conv(weight, 4)
    assert four.shape == (8, 4, 3, 3)
    torch.testing.assert_close(four[:, 3], weight[:, 0] * 0.75)
    torch.testing.assert_close(four[:, :3], weight * 0.75)
    grey = torch.rand(1, 1, 9, 9)
    rgb = torch.nn.functional.conv2d(grey.expand(1, 3, 9, 9), weight)
    for channels in (1, 6):
        adapted = adapt_input_conv(weight, channels)
        torch.testing.assert_close(torch.nn.functional.conv2d(grey.expand(1, channels, 9, 9), adapted), rgb)
    timm = pytest.importorskip("timm")
    for channels in (1, 5):
        torch.testing.assert_close(adapt_input_conv(weight, channels), timm.models.adapt_input_conv(channels, weight))


def test_resnet_reads_any_number_of_channels_from_its_rgb_stem(tmp_path: Path) -> None:
    """Pretrained or not, a 4-channel body's stem is the RGB one adapted; everything after it is the same tensors
    (no random number drawn for the wider stem)."""
    torch.manual_seed(0)
    rgb = ResNetBackbone(BackboneConfig("resnet18", norm="bn", trainable_layers=5))
    torch.manual_seed(0)
    four = build_backbone(BackboneConfig("resnet18", norm="bn", trainable_layers=5), in_channels=4)
    rgb_state, four_state = rgb.state_dict(), four.state_dict()
    assert four_state["body.conv1.weight"].shape == (64, 4, 7, 7) and four.body.conv1.weight.requires_grad
    torch.testing.assert_close(four_state["body.conv1.weight"][:, 3], rgb_state["body.conv1.weight"][:, 0] * 0.75)
    assert all(torch.equal(rgb_state[k], v) for k, v in four_state.items() if k != "body.conv1.weight")
    assert four(torch.rand(1, 4, 64, 64))["c5"].shape == (1, 512, 2, 2)
    path = tmp_path / "r18.pth"
    torch.save(models.resnet18(weights=None).state_dict(), path)
    frozen = ResNetBackbone(BackboneConfig("resnet18", weights=str(path), trainable_layers=3), in_channels=2)
    assert frozen.body.conv1.in_channels == 2 and not frozen.body.conv1.weight.requires_grad
