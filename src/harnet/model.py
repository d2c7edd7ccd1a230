"""HAR-Net: RetinaNet with spatial, channel and aligned attention, learned jointly.

backbone (+ aligned attention on C4/C5) -> FPN P3-P7 -> head (towers with channel/spatial
attention, one or two prediction sets) -> focal loss in training, decoded detections in eval.
The model follows torchvision's detection contract, resizing and normalising inside.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from harnet.aligned_attention import DeformableBottleneck
from harnet.anchors import build_anchor_generator
from harnet.backbone import build_backbone
from harnet.config import HARNetConfig
from harnet.fpn import build_fpn, pyramid_levels
from harnet.head import HARNetHead, Prediction
from harnet.losses import DetectionLoss
from harnet.postprocess import postprocess


class HARNet(nn.Module):
    """The detector. ``model(images, targets)`` -> losses in train mode; ``model(images)`` ->
    ``[{"boxes", "scores", "labels"}]`` in input-image pixels in eval mode.

    ``images`` is a list of float CHW tensors in [0, 1] of any sizes; ``targets`` a list of dicts
    with ``boxes`` (n, 4) XYXY pixels and ``labels`` (n,) int64 in ``0..num_classes-1``.
    """

    def __init__(self, config: HARNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or HARNetConfig()
        self.config = cfg
        t = cfg.transform
        self.transform = GeneralizedRCNNTransform(
            t.min_size, t.max_size, list(t.image_mean), list(t.image_std), size_divisible=t.size_divisible
        )
        self.backbone = build_backbone(cfg.backbone)
        channels = self.backbone.out_channels
        self.aligned = nn.ModuleDict()
        if cfg.aligned.enabled:
            for stage in cfg.aligned.stages:
                self.aligned[stage] = DeformableBottleneck(channels[stage], cfg.aligned)
        self.fpn = build_fpn(channels, cfg.fpn)
        self.head = HARNetHead(cfg)
        self.anchor_generator = build_anchor_generator(cfg.anchors)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.loss = DetectionLoss(cfg.loss, self.box_coder)

    def features(self, images: Tensor) -> list[Tensor]:
        """Normalised, padded batch -> [P3, ..., P7]."""
        c: OrderedDict[str, Tensor] = self.backbone(images)
        for stage, block in self.aligned.items():
            c[stage] = block(c[stage])
        return pyramid_levels(self.fpn(c))

    def forward_raw(self, images: Tensor) -> list[Prediction]:
        """Batch tensor (already normalised and padded) -> raw prediction sets. Used by export."""
        return self.head(self.features(images))

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("HARNet in train mode needs targets; call model.eval() to predict")
            _check_targets(targets, self.config.num_classes)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.features(image_list.tensors)
        sets = self.head(features)
        anchors = self.anchor_generator(image_list, features)
        if self.training:
            assert targets is not None
            return self.compute_loss(sets, targets, anchors)
        cls_logits, box_deltas = merge_prediction_sets(sets)
        per_level = [x.shape[-2] * x.shape[-1] * self.config.anchors.num_anchors for x in features]
        detections = postprocess(
            cls_logits, box_deltas, anchors, per_level, image_list.image_sizes, self.box_coder,
            self.config.inference,
        )
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def compute_loss(
        self, sets: list[Prediction], targets: list[dict[str, Tensor]], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        """Loss of each prediction set; with two sets (hybrid) each is weighted 0.5."""
        matched = self.loss.match(targets, anchors)
        weight = 1.0 / len(sets)
        losses: dict[str, Tensor] = {}
        for i, (cls_logits, box_deltas) in enumerate(sets):
            suffix = "" if i == 0 else f"_{i + 1}"
            for name, value in self.loss(targets, cls_logits, box_deltas, anchors, matched).items():
                losses[name + suffix] = value * weight
        return losses


def merge_prediction_sets(sets: list[Prediction]) -> Prediction:
    """Test-time logits and deltas: the hybrid's two prediction sets averaged, one set as is.

    Shared by ``forward``, test-time augmentation and export so that all three decode the same numbers.
    """
    if len(sets) == 1:
        return sets[0]
    return torch.stack([s[0] for s in sets]).mean(0), torch.stack([s[1] for s in sets]).mean(0)


def _check_targets(targets: list[dict[str, Tensor]], num_classes: int) -> None:
    """Fail early with a readable message instead of deep inside the matcher."""
    for i, t in enumerate(targets):
        boxes = t.get("boxes")
        if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"target {i}: 'boxes' must be a float tensor of shape (n, 4)")
        if "labels" not in t or t["labels"].shape[0] != boxes.shape[0]:
            raise ValueError(f"target {i}: 'labels' must be an int64 tensor with one label per box")
        labels = t["labels"]
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8):
            raise ValueError(f"target {i}: 'labels' must be an integer tensor, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            # A negative label would silently index the last class; too large fails deep in the loss.
            raise ValueError(f"target {i}: labels must be in 0..{num_classes - 1}, got {labels.tolist()}")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            j = int(torch.where(degenerate)[0][0])
            raise ValueError(f"target {i}: box {j} {boxes[j].tolist()} has non-positive width or height")
