"""COCO's matching of detections to ground truth, and its interpolated AP, in numpy.

pycocotools gives AP but not which detection matched which object, and that is what precision/recall at a
chosen score, a confusion matrix, TIDE's error types and the galleries of an evaluation report are built
from. This module redoes COCOeval's box matching for the "all" area range (``evaluateImg``) and its AP
(``accumulate``) step by step, in the same order and with the same tie rules, so that the AP computed from
these matches equals pycocotools' own (tests/engine/test_box_matching.py holds them side by side):

* detections are taken per (image, class), sorted by score (stable, so equal scores keep their file order),
  the ``max_dets`` best kept;
* each detection, best first, takes the unmatched object of its class with the highest IoU, if at least the
  threshold (of several equal IoUs, the last, as COCOeval's loop does); a crowd region (``iscrowd``) is
  matched only when no ordinary object is, is never used up, and makes the detection ignored rather than
  false; its IoU is the intersection over the detection's area;
* AP is the mean of the precision envelope sampled at 101 recall points.

Torch-free: it reads COCO dicts (an instances file, a results list) and works on float64 arrays, as
pycocotools does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# COCOeval's recall thresholds 0, 0.01, ..., 1 and its per-image detection limit.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100


@dataclass
class ImageBoxes:
    """One image's ground truth and detections. Boxes are XYWH float64 pixels, labels contiguous class
    indices (position in ``category_ids``); detections are sorted by score (stable) and limited to
    ``max_dets`` per class. ``gt_ref``/``dt_ref`` index the source lists (annotations, results)."""

    image_id: int
    file_name: str
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    gt_ref: np.ndarray
    dt_boxes: np.ndarray
    dt_labels: np.ndarray
    dt_scores: np.ndarray
    dt_ref: np.ndarray
    ious: np.ndarray  # (detections, objects); against a crowd region: intersection / detection area

    @property
    def num_gt(self) -> int:
        return len(self.gt_labels)

    @property
    def num_dt(self) -> int:
        return len(self.dt_labels)


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of XYWH boxes, (len(dt), len(gt)), as pycocotools' ``maskUtils.iou`` computes it for boxes: the
    union is the detection's own area where ``crowd`` is set."""
    dt = np.asarray(dt, dtype=np.float64).reshape(-1, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    width = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - np.maximum(
        dt[:, None, 0], gt[None, :, 0])
    height = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - np.maximum(
        dt[:, None, 1], gt[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    dt_area = (dt[:, 2] * dt[:, 3])[:, None]
    union = np.where(np.asarray(crowd, bool)[None, :], dt_area, dt_area + (gt[:, 2] * gt[:, 3])[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.where((width > 0) & (height > 0), iou, 0.0)


def group_by_image(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], category_ids: Sequence[int],
                   image_ids: Sequence[int] | None = None, max_dets: int = MAX_DETS) -> list[ImageBoxes]:
    """The images of a COCO instances dict (``image_ids`` of them, default all) in id order, as COCOeval takes
    them, each with its objects and detections (COCO results: ``image_id``, ``category_id``, XYWH ``bbox``,
    ``score``). Objects and detections of categories outside ``category_ids`` are left out, as COCOeval leaves
    out categories it does not evaluate; a detection on an image that is not evaluated is skipped."""
    label_of = {int(c): k for k, c in enumerate(category_ids)}
    names = {int(im["id"]): str(im.get("file_name", im["id"])) for im in ground_truth.get("images", [])}
    wanted = sorted({int(i) for i in (names if image_ids is None else image_ids)})
    if missing := [i for i in wanted if i not in names]:
        raise ValueError(f"image ids absent from the ground truth: {missing[:10]}")
    gts: dict[int, list[int]] = {i: [] for i in wanted}
    for k, ann in enumerate(ground_truth.get("annotations", [])):
        if int(ann["image_id"]) in gts and int(ann["category_id"]) in label_of:
            gts[int(ann["image_id"])].append(k)
    dts: dict[int, list[int]] = {i: [] for i in wanted}
    for k, det in enumerate(detections):
        if int(det["image_id"]) in dts and int(det["category_id"]) in label_of:
            dts[int(det["image_id"])].append(k)
    anns = ground_truth.get("annotations", [])
    images = []
    for image_id in wanted:
        g, d = gts[image_id], dts[image_id]
        gt_boxes = np.array([anns[k]["bbox"] for k in g], dtype=np.float64).reshape(-1, 4)
        gt_labels = np.array([label_of[int(anns[k]["category_id"])] for k in g], dtype=np.int64)
        gt_crowd = np.array([bool(anns[k].get("iscrowd", 0)) for k in g], dtype=bool)
        scores = np.array([float(detections[k]["score"]) for k in d], dtype=np.float64)
        labels = np.array([label_of[int(detections[k]["category_id"])] for k in d], dtype=np.int64)
        order = np.argsort(-scores, kind="mergesort")
        # The best max_dets per class: the rank of each detection among its class's, in score order.
        rank = np.zeros(len(order), dtype=np.int64)
        for label in np.unique(labels):
            members = order[labels[order] == label]
            rank[members] = np.arange(len(members))
        order = order[rank[order] < max_dets]
        dt_ref = np.array(d, dtype=np.int64)[order]
        dt_boxes = np.array([detections[k]["bbox"] for k in dt_ref], dtype=np.float64).reshape(-1, 4)
        images.append(ImageBoxes(image_id, names[image_id], gt_boxes, gt_labels, gt_crowd,
                                 np.array(g, dtype=np.int64), dt_boxes, labels[order], scores[order], dt_ref,
                                 box_iou(dt_boxes, gt_boxes, gt_crowd)))
    return images


@dataclass
class Matches:
    """COCO's matching at one IoU threshold, per image (lists parallel to the images): ``dt_gt[i][d]`` the
    object detection ``d`` matched (-1: none), ``dt_ignored`` whether that object is a crowd region (then
    the detection is neither true nor false), ``gt_dt[i][g]`` the detection that matched object ``g``
    (-1: none; crowd regions always -1)."""

    iou: float
    dt_gt: list[np.ndarray]
    dt_ignored: list[np.ndarray]
    gt_dt: list[np.ndarray]

    def true(self, i: int) -> np.ndarray:
        """Whether each detection of image ``i`` is a true positive."""
        return (self.dt_gt[i] >= 0) & ~self.dt_ignored[i]

    def false(self, i: int) -> np.ndarray:
        """Whether each detection of image ``i`` is a false positive (unmatched and not in a crowd region)."""
        return self.dt_gt[i] < 0


def _last_argmax(values: np.ndarray, allowed: np.ndarray) -> int:
    """Index of the largest allowed value, the last of equal ones; -1 if none is allowed."""
    if not allowed.any():
        return -1
    idx = np.flatnonzero(allowed)
    best = values[idx]
    return int(idx[len(best) - 1 - int(np.argmax(best[::-1]))])


def match(images: Sequence[ImageBoxes], iou: float) -> Matches:
    """Match every image's detections at IoU ``iou`` (see the module docstring)."""
    threshold = min(float(iou), 1 - 1e-10)  # COCOeval's cap, so that an IoU of 1.0 still matches at 1.0
    dt_gt, dt_ignored, gt_dt = [], [], []
    for im in images:
        taken = np.full(im.num_gt, -1, dtype=np.int64)
        matched = np.full(im.num_dt, -1, dtype=np.int64)
        ignored = np.zeros(im.num_dt, dtype=bool)
        for d in range(im.num_dt):  # already in score order
            row = im.ious[d]
            candidates = (im.gt_labels == im.dt_labels[d]) & (row >= threshold)
            g = _last_argmax(row, candidates & ~im.gt_crowd & (taken < 0))
            if g < 0:
                g = _last_argmax(row, candidates & im.gt_crowd)
                ignored[d] = g >= 0
            else:
                taken[g] = d
            matched[d] = g
        dt_gt.append(matched)
        dt_ignored.append(ignored)
        gt_dt.append(taken)
    return Matches(float(iou), dt_gt, dt_ignored, gt_dt)


def coco_ap(scores: np.ndarray, true: np.ndarray, num_gt: int) -> tuple[float, np.ndarray]:
    """COCO's interpolated AP of one class at one IoU: detections ``scores`` with their true/false flags (in
    COCOeval's order: images by id, each best first; ignored detections left out), ``num_gt`` objects.
    Returns (AP, the precision envelope at :data:`RECALL_POINTS`); NaN and zeros when ``num_gt`` is 0 (the AP
    is undefined: COCOeval leaves such a class out of its mean)."""
    if num_gt <= 0:
        return float("nan"), np.zeros(len(RECALL_POINTS))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    true = np.asarray(true, dtype=bool)[order]
    tp = np.cumsum(true, dtype=np.float64)
    fp = np.cumsum(~true, dtype=np.float64)
    recall = tp / num_gt
    precision = tp / (tp + fp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.zeros(len(RECALL_POINTS))
    inside = idx < len(envelope)
    sampled[inside] = envelope[idx[inside]]
    return float(sampled.mean()), sampled


@dataclass
class ClassDetections:
    """One class's detections over all images in COCOeval's order, ignored ones left out: their scores,
    whether each is true, the image (position in the image list) and detection index in it; and the number
    of objects (crowd regions not counted)."""

    scores: np.ndarray
    true: np.ndarray
    image: np.ndarray
    index: np.ndarray
    num_gt: int


def per_class(images: Sequence[ImageBoxes], matches: Matches, num_classes: int) -> list[ClassDetections]:
    """The detections of each class (see :class:`ClassDetections`) under ``matches``."""
    out = []
    for label in range(num_classes):
        scores, true, where, index = [], [], [], []
        num_gt = 0
        for i, im in enumerate(images):
            num_gt += int(((im.gt_labels == label) & ~im.gt_crowd).sum())
            keep = np.flatnonzero((im.dt_labels == label) & ~matches.dt_ignored[i])
            scores.append(im.dt_scores[keep])
            true.append(matches.dt_gt[i][keep] >= 0)
            where.append(np.full(len(keep), i, dtype=np.int64))
            index.append(keep)
        out.append(ClassDetections(np.concatenate(scores) if scores else np.zeros(0),
                                   np.concatenate(true) if true else np.zeros(0, bool),
                                   np.concatenate(where) if where else np.zeros(0, np.int64),
                                   np.concatenate(index) if index else np.zeros(0, np.int64), num_gt))
    return out


def mean_ap(classes: Sequence[ClassDetections]) -> float:
    """COCO's mean over the classes with objects of their AP; NaN when no class has any."""
    aps = [coco_ap(c.scores, c.true, c.num_gt)[0] for c in classes if c.num_gt > 0]
    return float(np.mean(aps)) if aps else float("nan")
