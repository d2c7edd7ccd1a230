"""Detections from the exported network's outputs in numpy: per-level top-k, decoding, NMS or
Gaussian Soft-NMS, box voting. The same algorithm, step for step and in float32, as
:mod:`harnet.modeling.postprocess` (which is torchvision's RetinaNet post-processing plus the
authors' Soft-NMS and voting), so a device without torch keeps the detections of ``harnet predict``.
"""

from __future__ import annotations

import math

import numpy as np

from harnet.config.model import InferenceConfig

SOFT_NMS_MIN_SCORE = 1e-3  # as harnet.modeling.postprocess: picks whose decayed score falls below it end Soft-NMS
BBOX_XFORM_CLIP = math.log(1000.0 / 16)  # torchvision's BoxCoder limit on dw, dh


def sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float32)))).astype(np.float32)


def decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, 4) (dx, dy, dw, dh) against (n, 4) XYXY anchors -> XYXY boxes (unit weights)."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + np.float32(0.5) * widths
    ctr_y = anchors[:, 1] + np.float32(0.5) * heights
    dw = np.minimum(deltas[:, 2], np.float32(BBOX_XFORM_CLIP))
    dh = np.minimum(deltas[:, 3], np.float32(BBOX_XFORM_CLIP))
    pred_x = deltas[:, 0] * widths + ctr_x
    pred_y = deltas[:, 1] * heights + ctr_y
    half_w = np.float32(0.5) * (np.exp(dw) * widths)
    half_h = np.float32(0.5) * (np.exp(dh) * heights)
    return np.stack([pred_x - half_w, pred_y - half_h, pred_x + half_w, pred_y + half_h], axis=1).astype(np.float32)


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, w)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, h)
    return out


def select_candidates(logits: list[np.ndarray], deltas: list[np.ndarray], anchors: list[np.ndarray],
                      image_size: tuple[int, int], cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image, per level: scores > thresh, their top-k, decoded and clipped (and boxes under
    ``min_box_size`` dropped)."""
    all_boxes, all_scores, all_labels = [], [], []
    for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
        num_classes = level_logits.shape[-1]
        scores = sigmoid(level_logits).ravel()
        idxs = np.nonzero(scores > cfg.score_thresh)[0]
        scores = scores[idxs]
        order = np.argsort(-scores, kind="stable")[: min(cfg.topk_candidates, idxs.size)]
        idxs, scores = idxs[order], scores[order]
        anchor_idxs = idxs // num_classes
        boxes = clip_boxes(decode(level_deltas[anchor_idxs], level_anchors[anchor_idxs]), image_size)
        labels = idxs % num_classes
        if cfg.min_box_size > 0:
            keep = ((boxes[:, 2] - boxes[:, 0]) >= cfg.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= cfg.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_labels.append(labels)
    return (np.concatenate(all_boxes).reshape(-1, 4).astype(np.float32), np.concatenate(all_scores).astype(np.float32),
            np.concatenate(all_labels).astype(np.int64))


def box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4), (m, 4) -> (n, m) IoU (torchvision's ``box_iou``)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS: indices kept, by decreasing score; a box is dropped when its IoU with a kept one
    is above ``iou_thresh`` (torchvision's ``nms``)."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(order), dtype=bool)
    areas = box_area(boxes)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[pos + 1:] |= iou > iou_thresh
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_thresh: float) -> np.ndarray:
    """NMS within each class; the kept indices sorted by decreasing score."""
    keep_mask = np.zeros(len(scores), dtype=bool)
    for label in np.unique(labels):
        idx = np.nonzero(labels == label)[0]
        keep_mask[idx[nms(boxes[idx], scores[idx], iou_thresh)]] = True
    keep = np.nonzero(keep_mask)[0]
    return keep[np.argsort(-scores[keep], kind="stable")]


def _by_class(labels: np.ndarray) -> np.ndarray:
    """Indices of the boxes as a (classes, most boxes of a class) table, -1 where empty, input order
    kept within a class."""
    _, group = np.unique(labels, return_inverse=True)
    group = group.ravel()
    counts = np.bincount(group)
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    starts = np.cumsum(counts) - counts
    position = np.arange(labels.size) - starts[sorted_group]
    table = np.full((counts.size, int(counts.max())), -1, dtype=np.int64)
    table[sorted_group, position] = order
    return table


def _row_iou(picked: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of ``picked[g]`` (G, 4) with every box of row ``boxes[g]`` (G, M, 4); 0/0 -> 0."""
    p = picked[:, None, :]
    wh = np.clip(np.minimum(p[..., 2:], boxes[..., 2:]) - np.maximum(p[..., :2], boxes[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(inter / (box_area(boxes) + box_area(p) - inter), nan=0.0)


def soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float,
             max_keep: int | None = None, min_score: float = SOFT_NMS_MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS per class, every class at once (one pick per class per step), as
    :func:`harnet.modeling.postprocess.soft_nms`: (indices, decayed scores) by decreasing score."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    table = _by_class(labels)
    valid = table >= 0
    rows = np.arange(table.shape[0])
    safe = np.clip(table, 0, None)
    table_boxes = boxes[safe]
    current = np.where(valid, scores[safe], np.float32(-1)).astype(np.float32)
    keep, kept_scores = [], []
    steps = table.shape[1] if max_keep is None else min(max_keep, table.shape[1])
    for _ in range(steps):
        best = current.argmax(axis=1)
        best_score = current[rows, best]
        active = best_score >= min_score
        if not active.any():
            break
        keep.append(table[rows[active], best[active]])
        kept_scores.append(best_score[active])
        current[rows, best] = -1.0
        iou = _row_iou(table_boxes[rows, best], table_boxes)
        current = np.where(current >= 0, current * np.exp(-(iou * iou) / np.float32(sigma)), current).astype(np.float32)
    keep_a, kept_a = np.concatenate(keep), np.concatenate(kept_scores)
    order = np.argsort(-kept_a, kind="stable")[:max_keep]
    return keep_a[order], kept_a[order]


def box_voting(kept_boxes: np.ndarray, kept_scores: np.ndarray, kept_labels: np.ndarray, boxes: np.ndarray,
               scores: np.ndarray, labels: np.ndarray, iou_thresh: float,
               num_neighbors: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The authors' box voting, as :func:`harnet.modeling.postprocess.box_voting` (see there)."""
    if kept_boxes.shape[0] == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    same_class = kept_labels[:, None] == labels[None, :]
    duplicate = ((kept_boxes[:, None, :] == boxes[None, :, :]).all(axis=2) & same_class).any(axis=0)
    reach = (np.nan_to_num(box_iou(kept_boxes, boxes), nan=0.0) >= iou_thresh) & same_class & ~duplicate[None, :]
    reached = reach.any(axis=0)
    claimer = reach.argmax(axis=0)
    claims = np.zeros_like(reach)
    claims[claimer[reached], np.nonzero(reached)[0]] = True
    neighbor_scores = np.where(claims, scores[None, :], np.float32(-1)).astype(np.float32)
    k = min(num_neighbors, boxes.shape[0])
    top = np.argsort(-neighbor_scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(neighbor_scores, top, axis=1)
    used = top_scores >= 0
    weights = np.where(used, top_scores, np.float32(0)).astype(np.float32)
    weight_sum = kept_scores + weights.sum(axis=1)
    tiny = np.finfo(np.float32).tiny
    voted_boxes = (kept_scores[:, None] * kept_boxes + (weights[:, :, None] * boxes[top]).sum(axis=1)) \
        / np.maximum(weight_sum, tiny)[:, None]
    voted_scores = weight_sum / np.float32(num_neighbors + 1)
    has = np.asarray(used.any(axis=1))
    return (np.where(has[:, None], voted_boxes, kept_boxes).astype(np.float32),
            np.where(has, voted_scores, kept_scores).astype(np.float32))


def suppress(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, cfg: InferenceConfig) -> dict[str, np.ndarray]:
    """NMS or Soft-NMS, optional box voting, then scores >= ``final_score_thresh``, at most
    ``detections_per_img`` by score."""
    voting = cfg.box_voting_iou is not None
    if cfg.nms == "soft_nms":
        keep, kept_scores = soft_nms(boxes, scores, labels, cfg.soft_nms_sigma,
                                     max_keep=None if voting else cfg.detections_per_img)
    else:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)
        if not voting:
            keep = keep[: cfg.detections_per_img]
        kept_scores = scores[keep]
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    if cfg.box_voting_iou is not None:
        kept_boxes, kept_scores = box_voting(kept_boxes, kept_scores, kept_labels, boxes, scores, labels,
                                             cfg.box_voting_iou, cfg.box_voting_neighbors)
    final = np.nonzero(np.asarray(kept_scores >= cfg.final_score_thresh))[0]
    final = final[np.argsort(-kept_scores[final], kind="stable")][: cfg.detections_per_img]
    return {"boxes": kept_boxes[final].reshape(-1, 4), "scores": kept_scores[final], "labels": kept_labels[final]}


def detections(cls_logits: np.ndarray, box_deltas: np.ndarray, anchors: np.ndarray, per_level: list[int],
               image_size: tuple[int, int], cfg: InferenceConfig) -> dict[str, np.ndarray]:
    """One image's (A, K) logits and (A, 4) deltas over (A, 4) anchors -> detections in the resized
    image's pixels."""
    splits = np.cumsum(per_level)[:-1]
    boxes, scores, labels = select_candidates(np.split(cls_logits, splits), np.split(box_deltas, splits),
                                              np.split(anchors, splits), image_size, cfg)
    return suppress(boxes, scores, labels, cfg)
