"""The paper's schedule (linear warmup, step decay, 0.1x lr for deformable offsets), parameter groups
(backbone/bias lr multipliers, bias/norm weight decay, overrides by parameter name) and the weight EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harnet.config.experiment import ParamOverride, TrainConfig
from harnet.config.io import ConfigError
from harnet.config.model import BackboneConfig, HARNetConfig
from harnet.engine.optim import (
    ModelEMA,
    backbone_body,
    build_optimizer,
    build_scheduler,
    ema_decay_at,
    is_norm,
    lr_factor,
)
from harnet.modeling.attention.channel import CrossLevelGroupNorm
from harnet.modeling.build import build_detector
from harnet.modeling.harnet import HARNet
from harnet.modeling.norm import LevelGroupNorm


def test_warmup_and_steps() -> None:
    f = lr_factor(TrainConfig(warmup_steps=10, warmup_factor=0.1, lr_steps=(20, 30), lr_gamma=0.1))
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.55)
    assert f(10) == 1.0 and f(19) == 1.0
    assert f(20) == pytest.approx(0.1) and f(30) == pytest.approx(0.01)


def test_offset_conv_gets_a_tenth_of_the_lr() -> None:
    cfg = HARNetConfig.preset("aligned", num_classes=2, backbone=BackboneConfig("resnet18", norm="bn"))
    model = HARNet(cfg)
    opt = build_optimizer(model, TrainConfig(lr=0.02))
    by_mult = {g["lr_mult"]: g for g in opt.param_groups}
    assert by_mult[0.1]["lr"] == pytest.approx(0.002)
    offset_params = {id(p) for p in model.aligned["c5"].offset.parameters()}
    assert {id(p) for p in by_mult[0.1]["params"]} == offset_params
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == n_trainable


def _hybrid() -> HARNet:
    body = BackboneConfig("resnet18", norm="bn", trainable_layers=5)
    return HARNet(HARNetConfig.preset("hybrid", num_classes=2, backbone=body))


def _settings(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, tuple[float, float]]:
    """parameter name -> (lr multiplier, weight decay) of its group."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr_mult"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_default_groups_are_the_lr_mult_groups_of_before() -> None:
    """With every option at its default: the groups of the module ``lr_mult`` the offset convs used to
    carry, i.e. lr x1 for everything but the offset convs' x0.1, parameters in module order (what the
    optimizer state of older checkpoints and the same-seed losses rely on)."""
    model = _hybrid()
    assert list(model.aligned) == ["c4", "c5"]
    opt = build_optimizer(model, TrainConfig(lr=0.02, weight_decay=1e-4))
    offsets = {id(p) for stage in model.aligned.values() for p in stage.offset.parameters()}
    old: dict[float, list[nn.Parameter]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                old.setdefault(0.1 if id(p) in offsets else 1.0, []).append(p)
    assert [g["lr_mult"] for g in opt.param_groups] == list(old) == [1.0, 0.1]
    for group, params in zip(opt.param_groups, old.values()):
        assert [id(p) for p in group["params"]] == [id(p) for p in params]
        assert group["weight_decay"] == 1e-4


def test_backbone_bias_and_norm_settings_compose() -> None:
    model = _hybrid()
    cfg = TrainConfig(lr=0.02, weight_decay=1e-4, backbone_lr_mult=0.1, bias_lr_mult=2.0, bias_weight_decay=0.0,
                      norm_weight_decay=0.0)
    s = _settings(build_optimizer(model, cfg), model)
    assert len(s) == sum(1 for p in model.parameters() if p.requires_grad)
    assert s["backbone.body.conv1.weight"] == (0.1, 1e-4)
    assert s["backbone.body.bn1.weight"] == (0.1, 0.0)  # BatchNorm weight: norm decay
    assert s["backbone.body.bn1.bias"] == (pytest.approx(0.2), 0.0)  # backbone x bias
    assert s["fpn.inner_blocks.0.0.weight"] == (1.0, 1e-4)  # FPN: not the body; conv inside Conv2dNormActivation
    assert s["fpn.inner_blocks.0.0.bias"] == (2.0, 0.0)
    assert s["aligned.c5.reduce.0.weight"] == (1.0, 1e-4)  # aligned attention on C5: new layer, full lr
    assert s["aligned.c5.reduce.1.weight"] == (1.0, 0.0)  # GroupNorm
    assert s["aligned.c5.offset.weight"] == (pytest.approx(0.1), 1e-4)  # the default override by name
    assert s["aligned.c5.offset.bias"] == (pytest.approx(0.2), 0.0)  # offset lr_mult x bias_lr_mult
    assert s["head.cls_tower.norms.0.weight"] == (1.0, 0.0)  # CrossLevelGroupNorm
    assert s["head.cls_tower.convs.0.weight"] == (1.0, 1e-4)
    assert s["head.cls_se.fc.0.weight"] == (1.0, 1e-4)  # Linear: a weight, not a norm


def test_groups_are_keyed_by_lr_and_decay_and_scheduled_per_group() -> None:
    model = _hybrid()
    cfg = TrainConfig(lr=0.02, weight_decay=1e-4, bias_lr_mult=2.0, norm_weight_decay=0.0, warmup_steps=10,
                      warmup_factor=0.5)
    opt = build_optimizer(model, cfg)
    keys = [(g["lr_mult"], g["weight_decay"]) for g in opt.param_groups]
    assert len(keys) == len(set(keys)) == 5  # (1, wd) (1, 0) (2, wd) (0.1, wd) (0.2, wd)
    assert [k for k in keys if k[0] == 1.0] == [(1.0, 1e-4), (1.0, 0.0)]  # first-appearance order
    assert len(build_optimizer(model, cfg).param_groups) == len(keys)  # deterministic
    sched = build_scheduler(opt, cfg)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.02 * g["lr_mult"] * 0.5)
    for _ in range(10):
        opt.step()
        sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.02 * g["lr_mult"])


def test_param_overrides_by_name_first_match_wins_and_compose() -> None:
    model = _hybrid()
    overrides = (ParamOverride("fpn.inner_blocks.0.*", lr_mult=0.0, weight_decay=0.5), ParamOverride("fpn.*", 0.5),
                 ParamOverride("aligned.*.offset.*", lr_mult=0.1))
    cfg = TrainConfig(lr=0.02, weight_decay=1e-4, backbone_lr_mult=0.1, bias_lr_mult=2.0, bias_weight_decay=0.0,
                      param_overrides=overrides)
    s = _settings(build_optimizer(model, cfg), model)
    assert s["fpn.inner_blocks.0.0.weight"] == (0.0, 0.5)  # the first match only; its decay wins
    assert s["fpn.inner_blocks.0.0.bias"] == (0.0, 0.5)  # ... over bias_weight_decay too
    assert s["fpn.inner_blocks.1.0.weight"] == (0.5, 1e-4)
    assert s["fpn.inner_blocks.1.0.bias"] == (1.0, 0.0)  # 0.5 x bias_lr_mult 2
    assert s["aligned.c4.offset.bias"] == (pytest.approx(0.2), 0.0)
    assert s["backbone.body.conv1.weight"] == (0.1, 1e-4)  # no match: backbone_lr_mult only
    assert s["head.cls_tower.convs.0.weight"] == (1.0, 1e-4)


def test_an_override_matching_nothing_is_an_error_except_the_default() -> None:
    cfg = HARNetConfig.preset("retinanet", num_classes=2, backbone=BackboneConfig("resnet18", norm="bn"))
    model = HARNet(cfg)
    opt = build_optimizer(model, TrainConfig())  # the default offset pattern: no aligned attention, no error
    assert [g["lr_mult"] for g in opt.param_groups] == [1.0]
    kept = TrainConfig(param_overrides=(*TrainConfig().param_overrides, ParamOverride("fpn.*", 0.5)))
    assert [g["lr_mult"] for g in build_optimizer(model, kept).param_groups] == [1.0, 0.5]
    with pytest.raises(ConfigError, match=r"pattern 'fnp\.\*' matches no parameter"):
        build_optimizer(model, TrainConfig(param_overrides=(ParamOverride("fnp.*", 0.5),)))


def test_norms_are_recognised_by_class() -> None:
    norms = [nn.BatchNorm2d(4), nn.SyncBatchNorm(4), nn.LazyBatchNorm2d(), nn.GroupNorm(2, 4), nn.LayerNorm(4),
             nn.InstanceNorm2d(4, affine=True), nn.LazyInstanceNorm2d(), CrossLevelGroupNorm(2, 4),
             LevelGroupNorm(2, 4)]
    assert all(is_norm(m) for m in norms)
    not_norms = [nn.Conv2d(4, 4, 1), nn.Linear(4, 4), nn.Sequential(nn.BatchNorm2d(4))]
    assert not any(is_norm(m) for m in not_norms)


def test_torchvision_peer_gives_the_backbone_mult_to_the_body_only() -> None:
    """Its body is ``backbone.body`` and its FPN ``backbone.fpn``: only the body is the pretrained part."""
    cfg = HARNetConfig.preset("retinanet", num_classes=2, backbone=BackboneConfig("resnet18", norm="bn"))
    cfg.loss.smooth_l1_beta = 1.0
    peer = build_detector("torchvision_retinanet", cfg)
    s = _settings(build_optimizer(peer, TrainConfig(backbone_lr_mult=0.1)), peer)
    assert {m for n, (m, _) in s.items() if n.startswith("backbone.body.")} == {0.1}
    assert {m for n, (m, _) in s.items() if not n.startswith("backbone.body.")} == {1.0}
    assert any(n.startswith("backbone.fpn.") for n in s) and any(n.startswith("head.") for n in s)
    assert backbone_body(peer) is peer.backbone.body and backbone_body(_hybrid()).__class__.__name__ == "ResNetBackbone"


def test_ema_decay_ramp() -> None:
    assert ema_decay_at(0.999, 0, 1) == 0.999
    assert ema_decay_at(0.999, 100, 1) == pytest.approx(0.999 * (1 - math.exp(-0.01)))
    assert ema_decay_at(0.999, 100, 100) == pytest.approx(0.999 * (1 - math.exp(-1)))
    assert ema_decay_at(0.999, 100, 2000) == pytest.approx(0.999, abs=1e-8)


def test_model_ema_averages_weights_and_buffers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    assert not ema.module.training and all(not p.requires_grad for p in ema.module.parameters())
    history = []
    for _ in range(4):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
        model(torch.rand(2, 3, 5, 5))  # train mode: updates BN statistics
        history.append((model[0].weight.clone(), model[1].running_mean.clone(),
                        model[1].num_batches_tracked.clone()))
        ema.update_parameters(model)
    weight, mean = history[0][0], history[0][1]  # the first update copies
    for n, (w, m, _) in enumerate(history[1:], start=2):
        d = ema_decay_at(0.9, 2.0, n)
        weight, mean = d * weight + (1 - d) * w, d * mean + (1 - d) * m
    torch.testing.assert_close(ema.module[0].weight, weight)
    torch.testing.assert_close(ema.module[1].running_mean, mean)
    assert int(ema.module[1].num_batches_tracked) == 4  # integer buffers are copied
    assert ema.updates == 4 and "n_averaged" in ema.state_dict()
    ema.train()
    assert not ema.module.training
