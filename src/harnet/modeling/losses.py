"""RetinaNet training loss: anchor matching, sigmoid focal loss and a box-regression loss.

Follows torchvision's RetinaNet exactly (the same Matcher, BoxCoder, ``sigmoid_focal_loss`` and box loss,
:func:`harnet.utils.compat.box_loss`), so that with attentions off our losses equal torchvision's: each image's loss is
normalised by its number of foreground anchors, then images are averaged (``normalizer="image"``).
``normalizer="level"`` is the authors' Caffe recipe instead: one loss per pyramid level over the
batch, divided by max(that level's foreground anchors, ``level_min_positives``), summed over levels.
The losses are computed in fp32 whatever the autocast state, so fp16/bf16 training cannot
overflow the focal sum or lose the small box deltas.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import boxes as box_ops
from torchvision.ops import sigmoid_focal_loss

from harnet.config.model import LossConfig
from harnet.utils.compat import BoxCoder, Matcher, box_loss


class DetectionLoss:
    """Matches anchors to ground truth once, then scores any number of prediction sets."""

    def __init__(self, cfg: LossConfig, box_coder: BoxCoder) -> None:
        self.cfg = cfg
        self.box_coder = box_coder
        self.matcher = Matcher(
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

    def _sums(self, target: dict[str, Tensor], logits: Tensor, deltas: Tensor, anchors: Tensor,
              matched: Tensor) -> tuple[Tensor, Tensor, int]:
        """Summed focal and box losses of one image's anchors (or a slice of them), and its foreground count."""
        foreground = matched >= 0
        gt_classes = torch.zeros_like(logits)
        gt_classes[foreground, target["labels"][matched[foreground]]] = 1.0
        valid = matched != self.matcher.BETWEEN_THRESHOLDS
        cls = sigmoid_focal_loss(logits[valid], gt_classes[valid], self.cfg.focal_alpha, self.cfg.focal_gamma, "sum")
        box = box_loss(self.cfg.box_loss, self.box_coder, anchors[foreground], target["boxes"][matched[foreground]],
                       deltas[foreground], beta=self.cfg.smooth_l1_beta)
        return cls, box, int(foreground.sum())

    def __call__(
        self,
        targets: list[dict[str, Tensor]],
        cls_logits: Tensor,
        box_deltas: Tensor,
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
        num_anchors_per_level: list[int] | None = None,
    ) -> dict[str, Tensor]:
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        if self.cfg.normalizer == "level":
            if num_anchors_per_level is None:
                raise ValueError("loss.normalizer 'level' needs the number of anchors per level")
            return self._per_level(targets, cls_logits, box_deltas, anchors, matched_idxs, num_anchors_per_level)
        cls_losses, box_losses = [], []
        for target, logits, deltas, anchors_i, matched in zip(
            targets, cls_logits, box_deltas, anchors, matched_idxs
        ):
            cls, box, num_fg = self._sums(target, logits, deltas, anchors_i, matched)
            cls_losses.append(cls / max(1, num_fg))
            box_losses.append(box / max(1, num_fg))
        n = len(targets)
        return {"classification": sum(cls_losses) / n, "bbox_regression": sum(box_losses) / n}

    def _per_level(self, targets: list[dict[str, Tensor]], cls_logits: Tensor, box_deltas: Tensor,
                   anchors: list[Tensor], matched_idxs: list[Tensor], per_level: list[int]) -> dict[str, Tensor]:
        cls_total, box_total = cls_logits.new_zeros(()), cls_logits.new_zeros(())
        start = 0
        for count in per_level:
            level = slice(start, start + count)
            start += count
            cls_sum, box_sum, num_fg = cls_logits.new_zeros(()), cls_logits.new_zeros(()), 0
            for target, logits, deltas, anchors_i, matched in zip(
                targets, cls_logits, box_deltas, anchors, matched_idxs
            ):
                cls, box, fg = self._sums(target, logits[level], deltas[level], anchors_i[level], matched[level])
                cls_sum, box_sum, num_fg = cls_sum + cls, box_sum + box, num_fg + fg
            normaliser = max(num_fg, self.cfg.level_min_positives)
            cls_total, box_total = cls_total + cls_sum / normaliser, box_total + box_sum / normaliser
        return {"classification": cls_total, "bbox_regression": box_total}
