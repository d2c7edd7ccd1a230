"""torchvision's RetinaNet built to a HAR-Net recipe: same network, same losses, same detections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from harnet.config.model import HARNetConfig
from harnet.engine import checkpoint
from harnet.engine.trainer import train
from harnet.modeling.harnet import HARNet
from harnet.modeling.torchvision_peer import build_torchvision_retinanet


def _config(**changes: object) -> HARNetConfig:
    cfg = HARNetConfig.preset("retinanet", num_classes=3)
    cfg.backbone.name, cfg.backbone.norm = "resnet18", "bn"
    cfg.fpn.channels, cfg.head.norm_groups, cfg.head.norm = 32, 8, "gn"
    cfg.anchors.sizes = (8.0, 16.0, 32.0, 64.0, 128.0)
    cfg.transform.min_size, cfg.transform.max_size = (96,), 96
    cfg.inference.score_thresh = 0.0
    cfg.loss.box_loss = "l1"  # torchvision's default; its smooth-L1 has beta 1, ours 1/9
    for dotted, value in changes.items():
        section, name = dotted.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


_PEER_TO_OURS = (
    (r"^backbone\.body\.body\.", "backbone.body."),
    (r"^backbone\.fpn\.", "fpn."),
    (r"^head\.classification_head\.conv\.(\d+)\.0\.", r"head.cls_tower.convs.\1."),
    (r"^head\.classification_head\.conv\.(\d+)\.1\.", r"head.cls_tower.norms.\1."),
    (r"^head\.regression_head\.conv\.(\d+)\.0\.", r"head.box_tower.convs.\1."),
    (r"^head\.regression_head\.conv\.(\d+)\.1\.", r"head.box_tower.norms.\1."),
    (r"^head\.classification_head\.cls_logits\.", "head.predictor.cls_logits."),
    (r"^head\.regression_head\.bbox_reg\.", "head.predictor.bbox_reg."),
)


def _ours_from_peer(peer: torch.nn.Module, cfg: HARNetConfig) -> HARNet:
    state = {}
    for key, value in peer.state_dict().items():
        for pattern, template in _PEER_TO_OURS:
            key = re.sub(pattern, template, key)
        state[key] = value
    ours = HARNet(cfg)
    ours.load_state_dict(state, strict=True)
    return ours


def test_peer_is_our_retinanet_preset() -> None:
    """Same parameters (GN head); with copied weights the same losses and detections."""
    cfg = _config()
    torch.manual_seed(0)
    peer = build_torchvision_retinanet(cfg)
    ours = _ours_from_peer(peer, cfg)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 80, generator=g), torch.rand(3, 70, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    peer.train()
    ours.train()
    expected, got = peer(images, targets), ours(images, targets)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    peer.eval()
    ours.eval()
    with torch.no_grad():
        for e, o in zip(peer(images), ours(images)):
            assert e["boxes"].shape[0] > 0
            torch.testing.assert_close(o["boxes"], e["boxes"], rtol=0, atol=1e-4)
            torch.testing.assert_close(o["scores"], e["scores"], rtol=0, atol=1e-5)
            assert torch.equal(o["labels"], e["labels"])


@pytest.mark.parametrize(("change", "message"), [
    ({"spatial__enabled": True}, "no attention"),
    ({"loss__focal_gamma": 1.5}, "loss.focal_gamma"),
    ({"inference__nms": "soft_nms"}, "inference.nms"),
    ({"loss__box_loss": "smooth_l1"}, "loss.smooth_l1_beta"),
    ({"loss__normalizer": "level"}, "loss.normalizer"),
    ({"inference__final_score_thresh": 0.05}, "inference.final_score_thresh"),
    ({"transform__test_max_size": 1200}, "transform.test_max_size"),
    ({"transform__test_min_size": 600}, "transform.test_min_size"),
])
def test_settings_torchvision_cannot_express_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_torchvision_retinanet(_config(**change))


def test_harnet_train_runs_the_peer(tiny, tmp_path: Path) -> None:
    """``detector: torchvision_retinanet`` trains, evaluates and checkpoints through our loop."""
    peer = ["detector=torchvision_retinanet", "model.head.norm=gn", "model.loss.box_loss=l1",
            "model.head.num_convs=4", "model.head.norm_groups=8", "train.max_steps=2"]
    cfg = tiny(tmp_path, *peer, preset="retinanet")
    result = train(cfg, progress=False)
    assert result.step == 2 and result.final is not None
    ckpt = checkpoint.load(tmp_path / "last.pt")
    model = checkpoint.build_model(ckpt)
    assert type(model).__name__ == "RetinaNet"
