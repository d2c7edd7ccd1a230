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


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a[g]`` (G, K, 4) with every box of ``b[g]`` (G, M, 4) -> (G, K, M); 0/0 -> 0."""
    p, q = a[:, :, None, :], b[:, None, :, :]
    wh = np.clip(np.minimum(p[..., 2:], q[..., 2:]) - np.maximum(p[..., :2], q[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(inter / (box_area(p) + box_area(q) - inter), nan=0.0)


SOFT_NMS_BLOCK = 64  # as harnet.modeling.postprocess: candidates per class examined per step


def soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float,
             max_keep: int | None = None, min_score: float = SOFT_NMS_MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS per class, batched as :func:`harnet.modeling.postprocess.soft_nms` (see there: each
    step picks every box of a class's best ``SOFT_NMS_BLOCK`` whose turn cannot change): (indices, decayed
    scores) by decreasing score."""
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    table = _by_class(labels)
    classes, width = table.shape
    rows = np.arange(classes)[:, None]
    safe = np.clip(table, 0, None)
    table_boxes = boxes[safe]
    current = np.where(table >= 0, scores[safe], np.float32(-1)).astype(np.float32)
    budget = np.full(classes, width if max_keep is None else min(max_keep, width))
    order = np.arange(min(SOFT_NMS_BLOCK, width))
    sigma32 = np.float32(sigma)
    keep, kept_scores = [], []
    while True:
        width = int((current >= min_score).sum(axis=1).max())  # below the floor never rises again
        if width == 0:
            break
        if width <= current.shape[1] // 2:
            by_score = np.argsort(-current, axis=1, kind="stable")[:, :width]
            current, table = np.take_along_axis(current, by_score, 1), np.take_along_axis(table, by_score, 1)
            table_boxes = table_boxes[rows, by_score]
        block = min(SOFT_NMS_BLOCK, width)
        n = min(block + 1, current.shape[1])
        best = np.argpartition(-current, n - 1, axis=1)[:, :n] if n < current.shape[1] else \
            np.broadcast_to(np.arange(n), (classes, n))
        position = np.take_along_axis(best, np.argsort(-np.take_along_axis(current, best, 1), axis=1,
                                                       kind="stable"), 1)
        top = np.take_along_axis(current, position, 1)
        outside = top[:, block] if top.shape[1] > block else np.full(classes, -1, dtype=np.float32)
        top, position = top[:, :block], position[:, :block]
        block_boxes = table_boxes[rows, position]
        iou = _pairwise_iou(block_boxes, block_boxes)
        later = order[None, :block] > order[:block, None]
        log_decay = np.where(later, -(iou * iou) / sigma32, np.float32(0))
        after = top[:, None, :] * np.exp(np.cumsum(log_decay, axis=1) - log_decay)
        mine = np.diagonal(after, axis1=1, axis2=2)
        rivals = np.where(later, after, np.float32(-1)).max(axis=2)
        ok = (mine >= np.maximum(rivals, outside[:, None])) & (mine >= min_score)
        count = np.minimum(np.cumprod(ok, axis=1).sum(axis=1), budget)
        most = int(count.max())
        if most == 0:
            break
        picked = order[None, :most] < count[:, None]
        budget = budget - count
        position = position[:, :most]
        keep.append(table[rows, position][picked])
        kept_scores.append(mine[:, :most][picked])
        iou = _pairwise_iou(block_boxes[:, :most], table_boxes)
        decay = np.where(picked[:, :, None], iou * iou, np.float32(0)).sum(axis=1)
        current[np.broadcast_to(rows, position.shape)[picked], position[picked]] = -1.0
        current = np.where(current >= 0, current * np.exp(-decay / sigma32), current).astype(np.float32)
    if not keep:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    keep_a, kept_a = np.concatenate(keep), np.concatenate(kept_scores).astype(np.float32)
    ranked = np.argsort(-kept_a, kind="stable")[:max_keep]
    return keep_a[ranked], kept_a[ranked]


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
