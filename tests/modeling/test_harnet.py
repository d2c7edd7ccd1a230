"""The whole detector: every preset trains end to end, predicts in input pixels, validates its input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harnet.config.model import PRESETS, BackboneConfig, HARNetConfig
from harnet.modeling.attention.aligned import DeformableBottleneck
from harnet.modeling.attention.channel import CrossLevelGroupNorm, CrossLevelSE
from harnet.modeling.attention.spatial import SpatialAttention
from harnet.modeling.harnet import HARNet
from harnet.modeling.postprocess import DenseOutputs

NUM_CLASSES = 3


def _cfg(preset: str) -> HARNetConfig:
    cfg = HARNetConfig.preset(
        preset, num_classes=NUM_CLASSES, backbone=BackboneConfig("resnet18", norm="bn", trainable_layers=5)
    )
    cfg.fpn.channels = 32
    cfg.channel.gn_groups = 8
    cfg.aligned.mid_channels = 32
    cfg.transform.min_size = (64,)
    cfg.transform.max_size = 128
    cfg.inference.final_score_thresh = 0.0  # untrained scores sit near the 0.01 prior
    return cfg


def _model(preset: str) -> HARNet:
    torch.manual_seed(0)
    return HARNet(_cfg(preset))


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 20.0, 70.0, 44.0]]),
         "labels": torch.tensor([2, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


@pytest.mark.parametrize("preset", PRESETS)
def test_one_train_step_reaches_every_parameter(preset: str) -> None:
    """Every trainable parameter gets a finite, non-zero gradient from one loss.backward().

    No parameter is zero by construction: even the zero-initialised offset conv of the aligned
    attention receives gradient, because torchvision's bilinear sampling has a non-zero derivative
    with respect to the offset at integer positions (one-sided difference of neighbouring pixels).
    """
    model = _model(preset).train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 80, generator=g), torch.rand(3, 56, 64, generator=g)]
    losses = model(images, _targets())
    expected_keys = {"classification", "bbox_regression"}
    if preset == "hybrid":
        expected_keys |= {"classification_2", "bbox_regression_2"}
    assert set(losses) == expected_keys
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(model.parameters()))  # trainable_layers=5: nothing frozen
    for name, p in trainable:
        assert p.grad is not None, f"{name}: no gradient"
        assert bool(torch.isfinite(p.grad).all()), f"{name}: non-finite gradient"
        assert float(p.grad.abs().sum()) > 0, f"{name}: zero gradient"


@pytest.mark.parametrize("preset", ["retinanet", "hybrid"])
def test_eval_returns_boxes_in_input_image_pixels(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-square images are resized inside (40x100 -> 51x128, 90x60 -> 96x64); the detections come
    back as the resized-image boxes scaled by original/resized size, within the original image."""
    model = _model(preset)
    model.config.inference.score_thresh = 0.0
    model.eval()
    resized: list[tuple[list[torch.Tensor], list[tuple[int, int]]]] = []
    original = DenseOutputs.detections

    def spy(self: DenseOutputs, *args: Any) -> list[dict[str, torch.Tensor]]:
        dets = original(self, *args)
        resized.append(([d["boxes"].clone() for d in dets], self.image_sizes))
        return dets

    monkeypatch.setattr(DenseOutputs, "detections", spy)
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 40, 100, generator=g), torch.rand(3, 90, 60, generator=g)]
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2
    inner_boxes, inner_sizes = resized[0]
    assert inner_sizes == [(51, 128), (96, 64)]
    for det, img, inner, (rh, rw) in zip(out, images, inner_boxes, inner_sizes):
        assert set(det) == {"boxes", "scores", "labels"}
        h, w = img.shape[-2:]
        boxes = det["boxes"]
        assert boxes.shape[0] == det["scores"].shape[0] == det["labels"].shape[0] > 0
        assert boxes.shape[0] <= model.config.inference.detections_per_img
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh])
        torch.testing.assert_close(boxes, inner * scale)
        assert bool((boxes >= 0).all()) and bool((boxes[:, 2] <= w + 1e-3).all())
        assert bool((boxes[:, 3] <= h + 1e-3).all())
        assert bool(((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all())
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())


def test_attentions_off_is_plain_retinanet() -> None:
    """preset('retinanet') holds no attention module, and equals the all-flags-off default config."""
    model = _model("retinanet")
    attention = (SpatialAttention, CrossLevelGroupNorm, CrossLevelSE, DeformableBottleneck)
    assert not [type(m).__name__ for m in model.modules() if isinstance(m, attention)]
    assert len(model.aligned) == 0 and model.head.spatial is None
    assert model.head.cls_se is None and model.head.box_se is None and model.head.set2 is None
    assert len(model.head.cls_tower.norms) == 0
    assert HARNetConfig().preset_name == "retinanet"
    assert HARNetConfig() == HARNetConfig.preset("retinanet")
    # The hybrid with every attention switched off has RetinaNet's modules (its init and test recipe differ).
    cfg = _cfg("hybrid")
    cfg.spatial.enabled = cfg.channel.enabled = cfg.aligned.enabled = cfg.dual_prediction = False
    shapes = {k: v.shape for k, v in HARNet(cfg).state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}
    # Each attention preset adds modules to that structure.
    for preset in ("spatial", "channel", "aligned", "hybrid"):
        assert any(isinstance(m, attention) for m in _model(preset).modules()), preset


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"boxes": torch.zeros(4), "labels": torch.zeros(1, dtype=torch.int64)}, "shape \\(n, 4\\)"),
        ({"labels": torch.zeros(1, dtype=torch.int64)}, "'boxes'"),
        ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.zeros(2, dtype=torch.int64)},
         "one label per box"),
        ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([1.0])}, "integer"),
        ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([NUM_CLASSES])}, "0..2"),
        ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([-1])}, "0..2"),
        ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [5.0, 5.0, 5.0, 8.0]]),
          "labels": torch.tensor([0, 1])}, "box 1 .* non-positive width or height"),
    ],
)
def test_bad_targets_raise_readable_value_error(target: dict[str, torch.Tensor], message: str) -> None:
    """Malformed targets fail before the network runs, naming the image and the problem."""
    model = _model("retinanet").train()
    with pytest.raises(ValueError, match=f"target 0: .*{message}"):
        model([torch.rand(3, 32, 32)], [target])


def test_train_mode_without_targets_and_unknown_preset() -> None:
    """Missing targets in train mode and an unknown preset name are ValueErrors that say what to do."""
    model = _model("retinanet").train()
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 32, 32)])
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*retinanet"):
        HARNetConfig.preset("nope")


def test_test_max_size_limits_the_long_side_at_test_time_only() -> None:
    """The authors test at short side 800 and long side <= 1200 (``transform.test_max_size``); training
    keeps ``max_size``."""
    cfg = _cfg("retinanet")
    cfg.transform.min_size, cfg.transform.max_size, cfg.transform.test_max_size = (64,), 256, 96
    model = HARNet(cfg)
    image = [torch.rand(3, 40, 200)]
    model.eval()
    assert model.preprocess(image)[0].image_sizes == [(19, 96)]
    model.train()
    assert model.preprocess(image)[0].image_sizes == [(51, 256)]


def test_test_min_size_sets_the_short_side_at_test_time_only() -> None:
    """``transform.test_min_size``: crops trained at short side 32 are tested whole at 48 (scale 1 both
    ways); training keeps ``min_size``, and test-time scales multiply it."""
    cfg = _cfg("retinanet")
    cfg.transform.min_size, cfg.transform.max_size, cfg.transform.test_min_size = (32,), 64, 48
    model = HARNet(cfg)
    model.eval()
    assert model.preprocess([torch.rand(3, 48, 48)])[0].image_sizes == [(48, 48)]
    assert model.preprocess([torch.rand(3, 48, 48)], scale=0.5)[0].image_sizes == [(24, 24)]
    model.train()
    assert model.preprocess([torch.rand(3, 48, 48)])[0].image_sizes == [(32, 32)]
    with pytest.raises(ValueError, match="test-time"):
        model.preprocess([torch.rand(3, 48, 48)], scale=0.5)


def test_build_harnet_passes_parts_and_equals_harnet_of_the_config() -> None:
    """``build_harnet`` builds each part and passes it in; the same seed gives the same weights as ``HARNet(cfg)``."""
    from harnet.modeling.harnet import build_harnet

    built = (torch.manual_seed(0), build_harnet(_cfg("hybrid")))[1]
    reference = _model("hybrid")
    assert built.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(built.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_tower_norm_factory() -> None:
    from harnet.modeling.attention.channel import CrossLevelGroupNorm
    from harnet.modeling.norm import LevelGroupNorm, build_level_norm

    assert build_level_norm("none", 8, 4) is None
    assert isinstance(build_level_norm("gn", 8, 4), LevelGroupNorm)
    assert isinstance(build_level_norm("cross_level_gn", 8, 4), CrossLevelGroupNorm)
    with pytest.raises(ValueError, match="tower norm must be"):
        build_level_norm("bn", 8, 4)  # type: ignore[arg-type]
    levels = [torch.randn(2, 8, 5, 5), torch.randn(2, 8, 3, 3)]
    gn = torch.nn.GroupNorm(4, 8)
    out = LevelGroupNorm(4, 8)(levels, relu=True)
    for x, y in zip(levels, out):
        torch.testing.assert_close(y, gn(x).relu())
