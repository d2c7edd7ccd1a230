"""Detections from head outputs: per-level top-k, decoding, then NMS or Gaussian Soft-NMS, and
optional box voting (the paper's test recipe, as the authors' ``merge_proposal_layer.py``).

The default path (hard NMS, no voting) is torchvision's RetinaNet post-processing step for step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from harnet.config.model import InferenceConfig
from harnet.utils.compat import BoxCoder

SOFT_NMS_MIN_SCORE = 1e-3  # the authors' (and Detectron's) Soft-NMS drops boxes whose decayed score falls below this


def select_candidates(
    logits_per_level: list[Tensor],
    deltas_per_level: list[Tensor],
    anchors_per_level: list[Tensor],
    image_size: tuple[int, int],
    box_coder: BoxCoder,
    cfg: InferenceConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: per level keep scores > thresh, the top-k of those, decode and clip (and drop boxes
    under ``min_box_size``)."""
    all_boxes, all_scores, all_labels = [], [], []
    for logits, deltas, anchors in zip(logits_per_level, deltas_per_level, anchors_per_level):
        num_classes = logits.shape[-1]
        scores = torch.sigmoid(logits).flatten()
        idxs = torch.where(scores > cfg.score_thresh)[0]
        scores = scores[idxs]
        scores, order = scores.topk(min(cfg.topk_candidates, idxs.numel()))
        idxs = idxs[order]
        anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
        boxes = clip_boxes_to_image(box_coder.decode_single(deltas[anchor_idxs], anchors[anchor_idxs]), image_size)
        labels = idxs % num_classes
        if cfg.min_box_size > 0:
            keep = remove_small_boxes(boxes, cfg.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_labels.append(labels)
    return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)


def _by_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of the boxes laid out as a (classes, most boxes of a class) table, -1 where empty.

    Returns (table, valid). Within a class the boxes keep their input order.
    """
    _, group = labels.unique(return_inverse=True)
    counts = torch.bincount(group)
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(labels.numel(), device=labels.device) - starts[sorted_group]
    table = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.int64, device=labels.device)
    table[sorted_group, position] = order
    return table, table >= 0


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a[g]`` (G, K, 4) with every box of ``b[g]`` (G, M, 4) -> (G, K, M).

    A zero-area pair (IoU 0/0) counts as no overlap."""
    p, q = a[:, :, None, :], b[:, None, :, :]
    wh = (torch.minimum(p[..., 2:], q[..., 2:]) - torch.maximum(p[..., :2], q[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
    return (inter / (area_p + area_q - inter)).nan_to_num(0.0)


SOFT_NMS_BLOCK = 64  # candidates per class examined per step of the batched Soft-NMS


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float,
             max_keep: int | None = None, min_score: float = SOFT_NMS_MIN_SCORE) -> tuple[Tensor, Tensor]:
    """Gaussian Soft-NMS per class: pick the best box, decay the others by exp(-IoU^2 / sigma), repeat
    until every remaining score is below ``min_score`` (the authors' ``cpu_soft_nms``, method 2).

    Returns (indices, decayed scores), sorted by decayed score (pick order within a class). Since
    picked scores only decrease, the top ``max_keep`` overall are among each class's first
    ``max_keep`` picks: with ``max_keep`` the loop stops there.

    Why batched: picking one box per step makes the loop as long as the candidate list (thousands of
    steps for a dense image, each a handful of tiny tensor ops). Each step here takes every class's
    ``SOFT_NMS_BLOCK`` best remaining boxes in score order and computes, from their pairwise IoUs, what
    one-at-a-time picking would do among them: box j is the next pick if, decayed by the picks before
    it, it still scores at least as high as every later box of the block (decayed by the same picks)
    and every box outside the block (which can only have decayed further). The longest such run is
    picked at once and the rest decayed by all of it. Boxes that do not overlap are picked together,
    so the steps follow the overlap structure, not the candidate count; the picks and scores are the
    one-at-a-time algorithm's, up to float rounding of the decay products.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    table, valid = _by_class(labels)
    classes, width = table.shape
    rows = torch.arange(classes, device=boxes.device)[:, None]
    table_boxes = boxes[table.clamp(min=0)]
    current = torch.where(valid, scores[table.clamp(min=0)], torch.full_like(table, -1, dtype=scores.dtype))
    budget = torch.full((classes,), width if max_keep is None else min(max_keep, width), device=boxes.device)
    order = torch.arange(min(SOFT_NMS_BLOCK, width), device=boxes.device)
    keep, kept_scores = [], []
    while True:
        alive = current >= min_score  # a box below the floor never rises again: drop it from the table
        width = int(alive.sum(dim=1).max())
        if width == 0:
            break
        if width <= current.shape[1] // 2:
            current, by_score = current.sort(dim=1, descending=True)
            current, by_score = current[:, :width], by_score[:, :width]
            table, table_boxes = table.gather(1, by_score), table_boxes[rows, by_score]
        block = min(SOFT_NMS_BLOCK, width)
        top, position = current.topk(min(block + 1, current.shape[1]), dim=1)
        outside = top[:, block] if top.shape[1] > block else torch.full_like(top[:, 0], -1.0)
        top, position = top[:, :block], position[:, :block]
        block_boxes = table_boxes[rows, position]
        iou = _pairwise_iou(block_boxes, block_boxes)
        later = (order[None, :block] > order[:block, None])  # [i, l]: l comes after i in the block
        log_decay = torch.where(later, -(iou * iou) / sigma, torch.zeros_like(iou))  # pick i decays a later l
        # after[g, j, l]: box l of the block once the boxes before j are picked.
        after = top[:, None, :] * torch.exp(torch.cumsum(log_decay, dim=1) - log_decay)
        mine = after.diagonal(dim1=1, dim2=2)  # (G, block): box j when its turn comes
        rivals = torch.where(later, after, torch.full_like(after, -1.0)).amax(dim=2)
        ok = (mine >= torch.maximum(rivals, outside[:, None])) & (mine >= min_score)
        count = torch.minimum(ok.to(torch.int64).cumprod(dim=1).sum(dim=1), budget)
        most = int(count.max())
        if most == 0:
            break
        picked = order[None, :most] < count[:, None]
        budget -= count
        position = position[:, :most]
        keep.append(table[rows, position][picked])
        kept_scores.append(mine[:, :most][picked])
        iou = _pairwise_iou(block_boxes[:, :most], table_boxes)
        decay = torch.where(picked[:, :, None], iou * iou, torch.zeros_like(iou)).sum(dim=1)
        current[rows.expand_as(position)[picked], position[picked]] = -1.0
        current = torch.where(current >= 0, current * torch.exp(-decay / sigma), current)
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    keep_t, kept_t = torch.cat(keep), torch.cat(kept_scores)
    ranked = torch.argsort(kept_t, descending=True, stable=True)[:max_keep]
    return keep_t[ranked], kept_t[ranked]


def box_voting(kept_boxes: Tensor, kept_scores: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor,
               labels: Tensor, iou_thresh: float, num_neighbors: int = 4) -> tuple[Tensor, Tensor]:
    """The authors' box voting (``_bbox_voting`` of ``merge_proposal_layer.py``) -> (boxes, scores).

    ``kept_*`` are the suppression's survivors in pick order (highest first per class), ``boxes`` etc.
    all candidates before suppression. Candidates identical to a kept box of their class never vote.
    Going through the kept boxes in order, a kept box claims every still unclaimed same-class
    candidate with IoU >= ``iou_thresh``; the ``num_neighbors`` highest-scoring of those vote: the
    box becomes the score-weighted mean of itself and them, the score (its score + theirs) /
    (num_neighbors + 1), always divided by num_neighbors + 1. A kept box that claims nothing keeps
    its box and score. A candidate goes to the first kept box that reaches it, so "claimed before"
    needs no loop: the claimer of each candidate is the first kept box of its class over the threshold.
    """
    if kept_boxes.numel() == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    same_class = kept_labels[:, None] == labels[None, :]
    duplicate = ((kept_boxes[:, None, :] == boxes[None, :, :]).all(dim=2) & same_class).any(dim=0)
    reach = (box_iou(kept_boxes, boxes).nan_to_num(0.0) >= iou_thresh) & same_class & ~duplicate[None, :]
    # Candidate j is claimed by the first kept box that reaches it (argmax returns the first True).
    reached = reach.any(dim=0)
    claimer = reach.to(torch.uint8).argmax(dim=0)
    claims = torch.zeros_like(reach)
    claims[claimer[reached], torch.where(reached)[0]] = True
    neighbor_scores = torch.where(claims, scores[None, :], torch.full_like(reach, -1.0, dtype=scores.dtype))
    k = min(num_neighbors, boxes.shape[0])
    top_scores, top = neighbor_scores.topk(k, dim=1)
    used = top_scores >= 0
    weights = torch.where(used, top_scores, torch.zeros_like(top_scores))
    weight_sum = kept_scores + weights.sum(dim=1)
    voted_boxes = (kept_scores[:, None] * kept_boxes + (weights[:, :, None] * boxes[top]).sum(dim=1)) \
        / weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny)[:, None]
    voted_scores = weight_sum / (num_neighbors + 1)
    has = used.any(dim=1)
    return torch.where(has[:, None], voted_boxes, kept_boxes), torch.where(has, voted_scores, kept_scores)


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: InferenceConfig) -> dict[str, Tensor]:
    """NMS or Soft-NMS across levels, optional box voting, then scores >= ``final_score_thresh``, at most
    ``detections_per_img`` by score."""
    voting = cfg.box_voting_iou is not None
    if cfg.nms == "soft_nms":
        # Voting re-scores, so the final top-k needs every pick, not only the first detections_per_img.
        keep, kept_scores = soft_nms(boxes, scores, labels, cfg.soft_nms_sigma,
                                     max_keep=None if voting else cfg.detections_per_img)
    else:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)
        if not voting:
            keep = keep[: cfg.detections_per_img]
        kept_scores = scores[keep]
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    if voting:
        assert cfg.box_voting_iou is not None
        kept_boxes, kept_scores = box_voting(kept_boxes, kept_scores, kept_labels, boxes, scores, labels,
                                             cfg.box_voting_iou, cfg.box_voting_neighbors)
    final = torch.where(kept_scores >= cfg.final_score_thresh)[0]
    final = final[torch.argsort(kept_scores[final], descending=True, stable=True)][: cfg.detections_per_img]
    return {"boxes": kept_boxes[final], "scores": kept_scores[final], "labels": kept_labels[final]}


def build_box_coder() -> BoxCoder:
    """RetinaNet's box coder (unit weights): one for the loss, decoding and export alike."""
    return BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


@dataclass
class DenseOutputs:
    """What decoding needs: the head's test-time outputs over all anchors, the anchors, and the image sizes.

    The one decode path: :meth:`HARNet.dense_outputs` makes it from a batch (``forward``, test-time
    augmentation), export from the exported network's outputs; both decode it with these two methods.
    """

    cls_logits: Tensor  # (N, sum HWA, K)
    box_deltas: Tensor  # (N, sum HWA, 4)
    anchors: list[Tensor]  # per image, (sum HWA, 4)
    num_anchors_per_level: list[int]
    image_sizes: list[tuple[int, int]]  # resized (h, w) inside the padded batch

    def candidates(self, box_coder: BoxCoder, cfg: InferenceConfig) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes, scores, labels) before suppression, in the resized image's coordinates
        (:func:`select_candidates` on each image's levels). Test-time augmentation pools these over views
        before one :func:`suppress`."""
        per_level = self.num_anchors_per_level
        return [
            select_candidates(list(logits.split(per_level)), list(deltas.split(per_level)),
                              list(anchors.split(per_level)), size, box_coder, cfg)
            for logits, deltas, anchors, size in zip(self.cls_logits, self.box_deltas, self.anchors, self.image_sizes)
        ]

    def detections(self, box_coder: BoxCoder, cfg: InferenceConfig) -> list[dict[str, Tensor]]:
        """Per image detections in the resized image's coordinates: candidates, then :func:`suppress`."""
        return [suppress(boxes, scores, labels, cfg) for boxes, scores, labels in self.candidates(box_coder, cfg)]
