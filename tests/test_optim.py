"""The paper's schedule: linear warmup, step decay, 0.1x lr for deformable offsets."""

from __future__ import annotations

import pytest

from harnet.config import BackboneConfig, HARNetConfig
from harnet.experiment import TrainConfig
from harnet.model import HARNet
from harnet.optim import build_optimizer, lr_factor


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
