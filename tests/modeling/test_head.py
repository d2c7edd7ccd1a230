"""Head: shared towers, and the hybrid's two prediction sets (0.5/0.5 loss, averaged at test time)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from harnet.config.model import BackboneConfig, HARNetConfig, HeadConfig
from harnet.modeling.harnet import HARNet, build_head
from harnet.modeling.head import prior_bias
from harnet.modeling.postprocess import DenseOutputs

SIZES = ((8, 8), (4, 4), (2, 2), (1, 1), (1, 1))
NUM_CLASSES = 3


def _hybrid(channels: int = 32) -> HARNetConfig:
    cfg = HARNetConfig.preset(
        "hybrid", num_classes=NUM_CLASSES, backbone=BackboneConfig("resnet18", norm="bn", trainable_layers=5)
    )
    cfg.fpn.channels = channels
    cfg.channel.gn_groups = 8
    cfg.aligned.mid_channels = 32
    cfg.transform.min_size = (64,)
    cfg.transform.max_size = 96
    cfg.inference.score_thresh = 0.0
    cfg.inference.final_score_thresh = 0.0
    return cfg


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(_hybrid())


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 64, 80, generator=g), torch.rand(3, 56, 64, generator=g)]


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


def test_hybrid_head_gives_two_prediction_sets() -> None:
    """Two (logits, deltas) sets of equal shapes. Set 2 follows the authors' ``featt/fpn_conv3x3_P3_CA4``
    (``bottom: fpn_P3_CA4/spatt``): set2.predictor(SE(ReLU(set2 extra conv(tower * mask)))), the *masked* towers."""
    torch.manual_seed(0)
    head = build_head(_hybrid())
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(2, 32, h, w, generator=g) for h, w in SIZES]
    total = sum(h * w for h, w in SIZES) * head.predictor.cls_logits.out_channels // NUM_CLASSES
    with torch.no_grad():
        sets = head([f.clone() for f in features])
        assert len(sets) == 2
        for logits, deltas in sets:
            assert logits.shape == (2, total, NUM_CLASSES) and deltas.shape == (2, total, 4)
        assert not torch.allclose(sets[0][0], sets[1][0])
        assert head.spatial is not None and head.cls_se is not None and head.box_se is not None
        masks = head.spatial.masks(features)
        cls_t = head.spatial.reweight(head.cls_tower([f.clone() for f in features]), masks)
        box_t = head.spatial.reweight(head.box_tower([f.clone() for f in features]), masks)
        expected1 = head.predictor(cls_t, box_t)
        assert head.set2 is not None and head.se_on == "set2"
        cls2 = head.cls_se([head.set2.cls_conv(x).relu() for x in cls_t])
        box2 = head.box_se([head.set2.box_conv(x).relu() for x in box_t])
        expected2 = head.set2.predictor(cls2, box2)
    for got, want in zip((*sets[0], *sets[1]), (*expected1, *expected2)):
        torch.testing.assert_close(got, want)


def test_both_sets_see_the_spatial_mask() -> None:
    """With the mask forced to ~0 (mode f * m), the towers are zeroed before both sets, so both sets'
    outputs stop depending on the input: the mask gates set 2 as well (``fpn_P3_CA4/spatt`` feeds it)."""
    torch.manual_seed(0)
    head = build_head(_hybrid())
    assert head.spatial is not None
    for net in head.spatial.levels:
        torch.nn.init.constant_(net[-1].bias, -100.0)  # sigmoid(-100) ~ 0
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(1, 32, h, w, generator=g) for h, w in SIZES]
    b = [torch.randn(1, 32, h, w, generator=g) * 3 for h, w in SIZES]
    with torch.no_grad():
        out_a, out_b = head(a), head(b)
    for (la, da), (lb, db) in zip(out_a, out_b):
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(da, db)


def test_legacy_wiring_takes_set_2_from_the_unmasked_towers() -> None:
    """``head.set2_after_mask: false`` (checkpoints from before the fix): set 2 ignores the mask."""
    cfg = _hybrid()
    cfg.head.set2_after_mask = False
    torch.manual_seed(0)
    head = build_head(cfg)
    assert head.spatial is not None
    for net in head.spatial.levels:
        torch.nn.init.constant_(net[-1].bias, -100.0)
    g = torch.Generator().manual_seed(2)
    a = [torch.randn(1, 32, h, w, generator=g) for h, w in SIZES]
    b = [torch.randn(1, 32, h, w, generator=g) * 3 for h, w in SIZES]
    with torch.no_grad():
        (s1a, s2a), (s1b, s2b) = head(a), head(b)
    torch.testing.assert_close(s1a[0], s1b[0])
    assert not torch.allclose(s2a[0], s2b[0])


def test_hybrid_initialisation_follows_the_authors() -> None:
    """``fpn_conv3x3_P3_CA4/gn/scale`` starts at 0.1 (the 4th tower conv's GN); towers, set 2's extra
    convs and both predictors are msra (std sqrt(2 / fan_in)); the class prior bias stays -4.595;
    spatial-attention convs are gaussian std 0.01."""
    cfg = _hybrid(channels=64)
    cfg.channel.gn_groups = 32
    torch.manual_seed(0)
    head = build_head(cfg)
    for tower in (head.cls_tower, head.box_tower):
        assert bool((tower.norms[-1].weight == 0.1).all())
        assert all(bool((n.weight == 1).all()) for n in tower.norms[:-1])
    assert head.set2 is not None
    msra = [*head.cls_tower.convs, *head.box_tower.convs, head.set2.cls_conv, head.set2.box_conv,
            head.predictor.cls_logits, head.set2.predictor.bbox_reg]
    for conv in msra:
        fan_in = conv.weight[0].numel()
        assert float(conv.weight.detach().std()) == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    for predictor in (head.predictor, head.set2.predictor):
        assert torch.allclose(predictor.cls_logits.bias, torch.tensor(-4.59512), atol=1e-4)
    assert head.spatial is not None
    spatial_convs = [m for m in head.spatial.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(float(m.weight.detach().std()) == pytest.approx(0.01, rel=0.2)
               for m in spatial_convs if m.weight.numel() > 500)
    retinanet = build_head(HARNetConfig.preset("retinanet", num_classes=3))
    assert float(retinanet.cls_tower.convs[0].weight.detach().std()) == pytest.approx(0.01, rel=0.05)


def test_single_set_without_dual_prediction() -> None:
    """Every non-hybrid preset has exactly one prediction set and no second predictor."""
    for name in ("retinanet", "spatial", "channel", "aligned"):
        cfg = HARNetConfig.preset(name, num_classes=NUM_CLASSES)
        cfg.fpn.channels, cfg.channel.gn_groups = 32, 8
        head = build_head(cfg)
        assert head.set2 is None
        features = [torch.randn(1, 32, h, w) for h, w in SIZES]
        assert len(head(features)) == 1


def test_hybrid_train_loss_weights_each_set_by_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss dict = {cls, box} of set 1 and {cls_2, box_2} of set 2, each = 0.5 * model.loss(set)."""
    model = _model().train()
    captured: dict[str, Any] = {}
    original = model.compute_loss

    def spy(sets: Any, targets: Any, anchors: Any, per_level: Any) -> dict[str, torch.Tensor]:
        captured.update(sets=sets, targets=targets, anchors=anchors)
        return original(sets, targets, anchors, per_level)

    monkeypatch.setattr(model, "compute_loss", spy)
    losses = model(_images(), _targets())
    assert set(losses) == {"classification", "bbox_regression", "classification_2", "bbox_regression_2"}
    sets, targets, anchors = captured["sets"], captured["targets"], captured["anchors"]
    matched = model.loss.match(targets, anchors)
    for suffix, (logits, deltas) in zip(("", "_2"), sets):
        full = model.loss(targets, logits, deltas, anchors, matched)
        for name, value in full.items():
            torch.testing.assert_close(losses[name + suffix], 0.5 * value)
            assert float(value.detach()) > 0


def test_hybrid_eval_averages_logits_and_deltas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding receives the mean of the two sets' logits and the mean of their deltas."""
    model = _model().eval()
    head_out: list[Any] = []
    model.head.register_forward_hook(lambda _m, _a, out: head_out.append(out))
    received: dict[str, torch.Tensor] = {}
    original = DenseOutputs.detections

    def spy(self: DenseOutputs, *args: Any) -> Any:
        received.update(cls_logits=self.cls_logits, box_deltas=self.box_deltas)
        return original(self, *args)

    monkeypatch.setattr(DenseOutputs, "detections", spy)
    with torch.no_grad():
        detections = model(_images())
    (s1, s2) = head_out[0]
    assert not torch.allclose(s1[0], s2[0]) and not torch.allclose(s1[1], s2[1])
    torch.testing.assert_close(received["cls_logits"], (s1[0] + s2[0]) / 2)
    torch.testing.assert_close(received["box_deltas"], (s1[1] + s2[1]) / 2)
    assert len(detections) == 2 and detections[0]["boxes"].shape[0] > 0


def test_head_norm_option_for_plain_retinanet() -> None:
    """``head.norm: gn`` gives per-level GN towers without any attention (RetinaNet-GN), with the head's own
    ``norm_groups``; channel attention replaces it with its own norm and groups."""
    plain = build_head(HARNetConfig.preset("retinanet", num_classes=3))
    gn = build_head(HARNetConfig.preset("retinanet", num_classes=3, head=HeadConfig(norm="gn", norm_groups=8)))
    assert plain.cls_tower.norm == "none" and len(plain.cls_tower.norms) == 0
    assert gn.cls_tower.norm == "gn" and gn.box_tower.norm == "gn"
    assert all(isinstance(n, torch.nn.GroupNorm) and n.num_groups == 8 for n in gn.cls_tower.norms)
    assert gn.spatial is None and gn.cls_se is None
    channel = build_head(HARNetConfig.preset("channel", num_classes=3, head=HeadConfig(norm="gn", norm_groups=8)))
    assert channel.cls_tower.norm == "cross_level_gn" and channel.cls_tower.norms[0].num_groups == 16


def test_set2_norm_option_normalises_the_extra_conv_like_the_towers() -> None:
    """``head.set2_norm`` (a named option, not the authors'): set 2's extra conv -> cross-level GN -> ReLU."""
    from harnet.modeling.attention.channel import CrossLevelGroupNorm
    from harnet.modeling.head import Tower

    cfg = _hybrid()
    cfg.head.set2_norm = True
    head = build_head(cfg)
    assert head.set2 is not None
    assert isinstance(head.set2.cls_conv, Tower) and isinstance(head.set2.cls_conv.norms[0], CrossLevelGroupNorm)
    features = [torch.randn(1, 32, h, w) for h, w in SIZES]
    with torch.no_grad():
        cls2 = head.set2.cls_conv(head.spatial.reweight(head.cls_tower(features), head.spatial.masks(features)))
    flat = torch.cat([x.flatten() for x in cls2])
    assert bool((flat >= 0).all()) and 0.2 < float(flat.mean()) < 1.0  # normalised then ReLU'd
    assert len(head(features)) == 2


def test_channel_preset_is_the_authors_channel_only_file() -> None:
    """Their channel-only file: cross-level GN with 16 groups after tower convs 1-3; conv 4 keeps its bias
    and goes straight to the ReLU. The hybrid normalises all four (32 groups)."""
    from harnet.modeling.attention.channel import CrossLevelGroupNorm
    from harnet.modeling.head import Tower

    channel = HARNetConfig.preset("channel", num_classes=NUM_CLASSES)
    assert (channel.channel.gn_groups, channel.channel.norm_convs) == (16, 3)
    hybrid = HARNetConfig.preset("hybrid", num_classes=NUM_CLASSES)
    assert (hybrid.channel.gn_groups, hybrid.channel.norm_convs) == (32, None)
    channel.fpn.channels = 32
    head = build_head(channel)
    for tower in (head.cls_tower, head.box_tower):
        assert len(tower.norms) == 3 and all(isinstance(n, CrossLevelGroupNorm) for n in tower.norms)
        assert all(n.num_groups == 16 for n in tower.norms)
        assert [conv.bias is not None for conv in tower.convs] == [False, False, False, True]
    assert len(build_head(_hybrid()).cls_tower.norms) == 4
    # Without a norm on a conv, its output is ReLU(conv(x)) exactly.
    tower = Tower(8, 2, "gn", gn_groups=4, norm_convs=1)
    x = [torch.randn(1, 8, 4, 4)]
    with torch.no_grad():
        first = tower.norms[0]([tower.convs[0](x[0])], relu=True)
        torch.testing.assert_close(tower(x)[0], tower.convs[1](first[0]).relu())


def test_prior_bias() -> None:
    """Classification bias -log((1 - 0.01) / 0.01) = -4.595 (sigmoid gives the prior back)."""
    assert prior_bias(0.01) == pytest.approx(-4.59512, abs=1e-5)
    assert 1 / (1 + math.exp(-prior_bias(0.2))) == pytest.approx(0.2)
