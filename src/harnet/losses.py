"""RetinaNet training loss: anchor matching, sigmoid focal loss and a box-regression loss.

Follows torchvision's RetinaNet exactly (the same Matcher, BoxCoder, ``sigmoid_focal_loss`` and
``_box_loss``), so that with attentions off our losses equal torchvision's: each image's loss is
normalised by its number of foreground anchors, then images are averaged.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

from harnet.config import LossConfig


class DetectionLoss:
    """Matches anchors to ground truth once, then scores any number of prediction sets."""

    def __init__(self, cfg: LossConfig, box_coder: det_utils.BoxCoder) -> None:
        self.cfg = cfg
        self.box_coder = box_coder
        self.matcher = det_utils.Matcher(
            cfg.fg_iou, cfg.bg_iou, allow_low_quality_matches=cfg.allow_low_quality_matches
        )

    def match(self, targets: list[dict[str, Tensor]], anchors: list[Tensor]) -> list[Tensor]:
        """Per image, the index of the matched box for each anchor, -1 background, -2 ignored."""
        matched = []
        for target, anchors_per_image in zip(targets, anchors):
            boxes = target["boxes"]
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                          device=anchors_per_image.device))
                continue
            matched.append(self.matcher(box_ops.box_iou(boxes, anchors_per_image)))
        return matched

    def __call__(
        self,
        targets: list[dict[str, Tensor]],
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        cls_losses, box_losses = [], []
        for target, logits, deltas, anchors_i, matched in zip(
            targets, cls_logits, box_deltas, anchors, matched_idxs
        ):
            foreground = matched >= 0
            num_fg = max(1, int(foreground.sum()))
            gt_classes = torch.zeros_like(logits)
            gt_classes[foreground, target["labels"][matched[foreground]]] = 1.0
            valid = matched != self.matcher.BETWEEN_THRESHOLDS
            cls_losses.append(
                sigmoid_focal_loss(
                    logits[valid], gt_classes[valid], self.cfg.focal_alpha, self.cfg.focal_gamma, "sum"
                ) / num_fg
            )
            gt_boxes = target["boxes"][matched[foreground]]
            fg_anchors = anchors_i[foreground]
            box_losses.append(
                det_utils._box_loss(
                    self.cfg.box_loss,
                    self.box_coder,
                    fg_anchors,
                    gt_boxes,
                    deltas[foreground],
                    {"beta": self.cfg.smooth_l1_beta},
                ) / num_fg
            )
        n = len(targets)
        return {"classification": sum(cls_losses) / n, "bbox_regression": sum(box_losses) / n}
