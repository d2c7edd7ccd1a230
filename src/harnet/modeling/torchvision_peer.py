"""torchvision's own RetinaNet, built to the recipe of a HAR-Net config: the same-budget peer.

An ablation that only compares our presets with each other cannot show that our baseline is a
*good* RetinaNet. Training torchvision's implementation with the same backbone, FPN, anchors,
image size, losses and schedule, and scoring it with the same evaluator, can: our ``retinanet``
preset must reach its AP. Only the head, loss and post-processing code differ (torchvision's
``RetinaNetHead``, its focal-loss/matcher code and its ``postprocess_detections``); the backbone
and FPN are the same modules HAR-Net builds, so their initialisation is identical too.

``detector: torchvision_retinanet`` in an experiment YAML trains this model with ``harnet train``.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead

from harnet.config.model import HARNetConfig
from harnet.modeling.anchors import build_anchor_generator
from harnet.modeling.backbone.resnet import build_backbone
from harnet.modeling.fpn import build_fpn
from harnet.modeling.preprocess import HARNetTransform
from harnet.utils.compat import set_retinanet_box_loss

# What torchvision's RetinaNet hard-codes; a config asking for anything else cannot be a peer.
_FIXED = {
    "loss.focal_alpha": 0.25,
    "loss.focal_gamma": 2.0,
    "loss.allow_low_quality_matches": True,
    "inference.nms": "nms",
    "inference.box_voting_iou": None,
    "inference.final_score_thresh": 0.0,
    "inference.min_box_size": 0.0,
    "loss.normalizer": "image",
    "transform.test_max_size": None,
    "transform.test_min_size": None,
    "head.prior_probability": 0.01,
    "head.num_convs": 4,
}


class BodyFPN(nn.Module):
    """Our body (ResNet or EfficientNet-Lite0) + FPN behind torchvision's backbone contract (``out_channels``,
    dict out)."""

    def __init__(self, cfg: HARNetConfig) -> None:
        super().__init__()
        self.body = build_backbone(cfg.backbone, cfg.input.channels)
        self.fpn = build_fpn(self.body.out_channels, cfg.fpn)
        self.out_channels = cfg.fpn.channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))


def _setting(cfg: HARNetConfig, dotted: str) -> object:
    section, name = dotted.split(".")
    return getattr(getattr(cfg, section), name)


def build_torchvision_retinanet(cfg: HARNetConfig) -> RetinaNet:
    """``torchvision.models.detection.RetinaNet`` with ``cfg``'s backbone, FPN, anchors, head norm,
    box loss, matcher thresholds, transform and inference settings.

    Raises ``ValueError`` for a config torchvision cannot express: any attention switched on, or a
    loss/inference setting torchvision hard-codes set to another value.
    """
    attentions = [name for name in ("spatial", "channel", "aligned") if getattr(cfg, name).enabled]
    if attentions or cfg.dual_prediction:
        raise ValueError(f"torchvision's RetinaNet has no attention; switch off {attentions or ['dual_prediction']}"
                         " (model.preset: retinanet)")
    wrong = {k: _setting(cfg, k) for k, v in _FIXED.items() if _setting(cfg, k) != v}
    if cfg.loss.box_loss == "smooth_l1" and cfg.loss.smooth_l1_beta != 1.0:  # torchvision passes no beta
        wrong["loss.smooth_l1_beta"] = cfg.loss.smooth_l1_beta
    if wrong:
        raise ValueError(f"torchvision's RetinaNet fixes these settings; the config has {wrong}, torchvision uses "
                         + str({k: _FIXED.get(k, 1.0) for k in wrong}))
    backbone = BodyFPN(cfg)
    anchors = build_anchor_generator(cfg.anchors)
    if cfg.head.norm == "cross_level_gn":
        raise ValueError("torchvision's RetinaNet has no cross-level GroupNorm; use model.head.norm: gn or none")
    norm = partial(nn.GroupNorm, cfg.head.norm_groups) if cfg.head.norm == "gn" else None
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], cfg.num_classes,
                         norm_layer=norm)
    set_retinanet_box_loss(head.regression_head, cfg.loss.box_loss)
    t, inf = cfg.transform, cfg.inference
    model = RetinaNet(
        backbone, cfg.num_classes, min_size=t.min_size, max_size=t.max_size, image_mean=list(t.image_mean),
        image_std=list(t.image_std), anchor_generator=anchors, head=head, score_thresh=inf.score_thresh,
        nms_thresh=inf.nms_iou, detections_per_img=inf.detections_per_img, fg_iou_thresh=cfg.loss.fg_iou,
        bg_iou_thresh=cfg.loss.bg_iou, topk_candidates=inf.topk_candidates, size_divisible=t.size_divisible,
    )
    # The same transform with HAR-Net's nodata rule (NaN pixels normalised to 0), so both read rasters alike.
    model.transform = HARNetTransform(t.min_size, t.max_size, list(t.image_mean), list(t.image_std),
                                      size_divisible=t.size_divisible)
    return model
