"""Detections from head outputs: per-level top-k, decoding, then NMS or Gaussian Soft-NMS, and
optional box voting (the paper's test recipe).

The default path (hard NMS, no voting) is torchvision's RetinaNet post-processing step for step.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from harnet.config import InferenceConfig

SOFT_NMS_MIN_SCORE = 1e-3  # Detectron drops boxes whose decayed score falls below this


def select_candidates(
    logits_per_level: list[Tensor],
    deltas_per_level: list[Tensor],
    anchors_per_level: list[Tensor],
    image_size: tuple[int, int],
    box_coder: det_utils.BoxCoder,
    cfg: InferenceConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: per level keep scores > thresh, the top-k of those, decode and clip."""
    all_boxes, all_scores, all_labels = [], [], []
    for logits, deltas, anchors in zip(logits_per_level, deltas_per_level, anchors_per_level):
        num_classes = logits.shape[-1]
        scores = torch.sigmoid(logits).flatten()
        idxs = torch.where(scores > cfg.score_thresh)[0]
        scores = scores[idxs]
        scores, order = scores.topk(min(cfg.topk_candidates, idxs.numel()))
        idxs = idxs[order]
        anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
        boxes = box_coder.decode_single(deltas[anchor_idxs], anchors[anchor_idxs])
        all_boxes.append(clip_boxes_to_image(boxes, image_size))
        all_scores.append(scores)
        all_labels.append(idxs % num_classes)
    return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float, max_keep: int) -> tuple[Tensor, Tensor]:
    """Gaussian Soft-NMS per class: pick the best box, decay the others by exp(-IoU^2 / sigma).

    Returns (indices, decayed scores) in pick order. Classes never interact (boxes are offset per
    class as in ``batched_nms``), and since picked scores only decrease, the first ``max_keep``
    global picks are exactly the top ``max_keep`` of per-class Soft-NMS; so the loop is bounded by
    ``max_keep`` and needs one IoU row per pick, not an n x n matrix.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    offsets = labels.to(boxes) * (boxes.max() + 1)
    shifted = boxes + offsets[:, None]
    current = scores.clone()
    alive = torch.ones_like(scores, dtype=torch.bool)
    keep, kept_scores = [], []
    for _ in range(min(max_keep, boxes.shape[0])):
        masked = torch.where(alive, current, torch.full_like(current, -1.0))
        best = int(masked.argmax())
        best_score = masked[best]
        if best_score < SOFT_NMS_MIN_SCORE:
            break
        keep.append(best)
        kept_scores.append(best_score)
        alive[best] = False
        # A zero-area box (clipped flat at the border) has IoU 0/0 with another one: count it as no overlap.
        iou = box_iou(shifted[best : best + 1], shifted)[0].nan_to_num(0.0)
        current = current * torch.exp(-(iou * iou) / sigma)
    return torch.tensor(keep, dtype=torch.int64, device=boxes.device), torch.stack(kept_scores)


def box_voting(
    kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, iou_thresh: float
) -> Tensor:
    """Each kept box becomes the score-weighted mean of same-class candidates with IoU >= thresh.

    The kept box is itself a candidate, so the weights sum to zero only for a zero-area kept box
    (IoU 0/0 even with itself), which is returned unchanged.
    """
    if kept_boxes.numel() == 0:
        return kept_boxes
    iou = box_iou(kept_boxes, boxes)
    votes = (iou >= iou_thresh) & (kept_labels[:, None] == labels[None, :])
    weights = votes.to(scores) * scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total > 0, (weights @ boxes) / total.clamp(min=torch.finfo(total.dtype).tiny), kept_boxes)


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: InferenceConfig) -> dict[str, Tensor]:
    """NMS or Soft-NMS across levels, optional box voting, at most ``detections_per_img``."""
    if cfg.nms == "soft_nms":
        keep, kept_scores = soft_nms(boxes, scores, labels, cfg.soft_nms_sigma, cfg.detections_per_img)
    else:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_img]
        kept_scores = scores[keep]
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    if cfg.box_voting_iou is not None:
        kept_boxes = box_voting(kept_boxes, kept_labels, boxes, scores, labels, cfg.box_voting_iou)
    return {"boxes": kept_boxes, "scores": kept_scores, "labels": kept_labels}


def batch_candidates(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: list[Tensor],
    num_anchors_per_level: list[int],
    image_sizes: list[tuple[int, int]],
    box_coder: det_utils.BoxCoder,
    cfg: InferenceConfig,
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Batch of head outputs -> per-image (boxes, scores, labels) before suppression, in the resized
    image's coordinates. Test-time augmentation pools these over views before one ``suppress``."""
    out = []
    for logits, deltas, anchors_i, size in zip(cls_logits, box_deltas, anchors, image_sizes):
        out.append(select_candidates(
            list(logits.split(num_anchors_per_level)),
            list(deltas.split(num_anchors_per_level)),
            list(anchors_i.split(num_anchors_per_level)),
            size,
            box_coder,
            cfg,
        ))
    return out


def postprocess(
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: list[Tensor],
    num_anchors_per_level: list[int],
    image_sizes: list[tuple[int, int]],
    box_coder: det_utils.BoxCoder,
    cfg: InferenceConfig,
) -> list[dict[str, Tensor]]:
    """Batch of head outputs -> per-image detections in the resized image's coordinates."""
    candidates = batch_candidates(cls_logits, box_deltas, anchors, num_anchors_per_level, image_sizes, box_coder, cfg)
    return [suppress(boxes, scores, labels, cfg) for boxes, scores, labels in candidates]
