"""Where a detector fails, from COCO-format ground truth and detections: the numbers of ``harnet eval --report``.

AP tells how good a model is, not what to do next. This adds, per class: COCO's AP by IoU and object size
(pycocotools' own arrays); precision, recall and F1 at one IoU and score threshold, the threshold of best
F1 found by a sweep over every detection score (the one to ship), and their curves; a confusion matrix over
the classes and background; TIDE's error types with what fixing each would add to AP
(:mod:`harnet.engine.tide`); and the worst false detections and largest missed objects, for the galleries.

Matching is COCO's (:mod:`harnet.engine.box_matching`): greedy by score, each detection taking the best
unmatched object of its class. Because it is greedy in score order, raising the score threshold never
changes the matches of the detections kept, so one matching gives precision and recall at every threshold.
The confusion matrix adds a second pass at the chosen score: each detection still unmatched (best first)
takes the unmatched object of any class it overlaps most, by at least the IoU; those pairs are the
off-diagonal cells, the detections left are false detections (background row), the objects left missed
(background column). Torch-free: numpy and pycocotools.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harnet.engine.box_matching import (
    MAX_DETS,
    RECALL_POINTS,
    ImageBoxes,
    Matches,
    coco_ap,
    group_by_image,
    match,
    per_class,
)
from harnet.engine.tide import ERROR_TYPES, NO_ERROR, TIDE_BG_IOU, TIDE_FG_IOU, TideResult, classify_errors, tide

DEFAULT_IOU = 0.5
# Score thresholds of the F1 and precision/recall curves in report.json and the plots.
SCORE_GRID = np.round(np.linspace(0.0, 1.0, 101), 2)
GALLERY_SIZE = 12
# pycocotools' area ranges (index into COCOeval's area axis) under harnet's names.
AREA_INDEX = {"APs": 1, "APm": 2, "APl": 3}


def _clean(value: float) -> float | None:
    """A number for strict JSON: NaN (undefined) and pycocotools' -1 become None."""
    return None if value is None or math.isnan(value) or value < 0 else float(value)


@dataclass
class ClassRow:
    """One class's line of the report. COCO numbers as pycocotools computes them (None where undefined,
    e.g. APs without small objects); ``ap_iou`` COCO's AP at the report's IoU; precision, recall, F1 and
    counts at the report's IoU and score."""

    name: str
    num_gt: int
    num_detections: int  # at or above the score threshold
    coco: dict[str, float | None]
    ap_iou: float | None
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float | None
    recall: float | None
    f1: float | None
    best_f1: float | None  # this class's own best F1 over the sweep, and its threshold
    best_f1_score: float | None


@dataclass
class Curves:
    """Precision, recall and F1 at each :data:`SCORE_GRID` threshold (None where nothing is detected or
    nothing is there to find), and the precision envelope at COCO's 101 recall points, at the report's IoU."""

    precision: list[float | None]
    recall: list[float | None]
    f1: list[float | None]
    pr_precision: list[float]


@dataclass
class GalleryItem:
    """A false detection or a missed object: where (``image`` is the position in :attr:`ErrorAnalysis.images`),
    its box (XYXY pixels), class and score (None for an object), the TIDE-style reason at the report's IoU,
    and its best overlap on the other side (an object for a detection, a detection at or above the score for
    an object): class, score, box and IoU, None when nothing overlaps."""

    image: int
    image_id: int
    file_name: str
    box: list[float]
    label: int
    score: float | None
    reason: str
    other_box: list[float] | None = None
    other_label: int | None = None
    other_score: float | None = None
    other_iou: float | None = None

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        out = {"image_id": self.image_id, "file_name": self.file_name, "box_xyxy": self.box,
               "class": class_names[self.label], "score": self.score, "reason": self.reason}
        if self.other_box is not None and self.other_label is not None:
            out["overlap"] = {"class": class_names[self.other_label], "box_xyxy": self.other_box,
                              "score": self.other_score, "iou": self.other_iou}
        return out


@dataclass
class ErrorAnalysis:
    """Everything :func:`analyse` found (see the module docstring); :meth:`to_dict` is report.json's body."""

    class_names: list[str]
    iou: float
    score: float
    score_chosen_by: str  # "best F1" or "given"
    num_images: int
    coco: dict[str, float | None]  # the 12 COCOeval stats
    classes: list[ClassRow]
    overall: dict[str, Any]  # pooled over the classes: TP, FP, FN, precision, recall, F1 at (iou, score)
    curves: dict[str, Curves]  # per class name, and "all" (pooled)
    confusion: np.ndarray  # (K + 1, K + 1): rows objects (last: background), columns detections (last: missed)
    tide: TideResult
    false_detections: list[GalleryItem]
    missed: list[GalleryItem]
    images: list[ImageBoxes] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        names = self.class_names

        def row(r: ClassRow) -> dict[str, Any]:
            return {k: v for k, v in r.__dict__.items()}

        return {
            "iou": self.iou, "score": self.score, "score_chosen_by": self.score_chosen_by,
            "num_images": self.num_images, "coco": self.coco,
            "classes": [row(r) for r in self.classes], "overall": self.overall,
            "curves": {"score_thresholds": SCORE_GRID.tolist(), "recall_points": RECALL_POINTS.round(2).tolist(),
                       **{k: c.__dict__ for k, c in self.curves.items()}},
            "confusion": {"rows": "objects (ground truth), the last row background: false detections",
                          "columns": "detections, the last column background: missed objects",
                          "labels": [*names, "background"], "counts": self.confusion.tolist()},
            "tide": self.tide.to_dict(),
            "false_detections": [g.to_dict(names) for g in self.false_detections],
            "missed": [g.to_dict(names) for g in self.missed],
        }


def coco_per_class(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], category_ids: Sequence[int],
                   image_ids: Sequence[int]) -> tuple[dict[str, float | None], list[dict[str, float | None]]]:
    """pycocotools' 12 stats, and per class AP, AP50, AP75, APs, APm, APl from its precision array (area
    ranges as COCO's, 100 detections), None where undefined."""
    gt = COCO()
    gt.dataset = copy.deepcopy(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if detections:
            dt = gt.loadRes([dict(d) for d in detections])
        else:  # loadRes([]) fails; an empty result set is a COCO with no annotations
            dt = COCO()
            dt.dataset = {"images": list(gt.dataset.get("images", [])), "categories": gt.dataset.get("categories", []),
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted({int(i) for i in image_ids})
        ev.params.catIds = [int(c) for c in category_ids]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
    stats = {n: _clean(float(v)) for n, v in zip(names, ev.stats.tolist())}
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M max dets]
    ious = ev.params.iouThrs

    def mean(p: np.ndarray) -> float | None:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else None

    rows = []
    for cat in category_ids:
        k = list(ev.params.catIds).index(int(cat))  # COCOeval sorts its category ids
        row = {"AP": mean(precision[:, :, k, 0, -1]),
               "AP50": mean(precision[int(np.argmin(np.abs(ious - 0.5))), :, k, 0, -1]),
               "AP75": mean(precision[int(np.argmin(np.abs(ious - 0.75))), :, k, 0, -1])}
        rows.append(row | {n: mean(precision[:, :, k, a, -1]) for n, a in AREA_INDEX.items()})
    return stats, rows


@dataclass
class _Sweep:
    """Detections sorted by score (best first) with cumulative true positives; ``num_gt`` objects."""

    scores: np.ndarray
    cum_true: np.ndarray
    num_gt: int

    def at(self, threshold: float) -> tuple[int, int, int]:
        """(true positives, false positives, false negatives) keeping the scores >= ``threshold``."""
        n = int(np.searchsorted(-self.scores, -threshold, side="right"))
        tp = int(self.cum_true[n - 1]) if n else 0
        return tp, n - tp, self.num_gt - tp

    def best_f1(self) -> tuple[float | None, float | None]:
        """(best F1, the highest threshold reaching it) over the detection scores; (None, None) without any."""
        if not len(self.scores) or self.num_gt == 0:
            return None, None
        last = np.r_[self.scores[1:] != self.scores[:-1], True]  # the end of each group of equal scores
        n = np.flatnonzero(last) + 1
        f1 = 2 * self.cum_true[n - 1] / (n + self.num_gt)
        k = int(np.argmax(f1))
        return float(f1[k]), float(self.scores[n[k] - 1])


def _sweep(scores: np.ndarray, true: np.ndarray, num_gt: int) -> _Sweep:
    order = np.argsort(-scores, kind="mergesort")
    return _Sweep(scores[order], np.cumsum(true[order]), num_gt)


def _prf(tp: int, fp: int, fn: int) -> tuple[float | None, float | None, float | None]:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return precision, recall, f1


def _curves(sweep: _Sweep, pr_precision: np.ndarray) -> Curves:
    p, r, f = zip(*(_prf(*sweep.at(float(s))) for s in SCORE_GRID))
    return Curves(list(p), list(r), list(f), [float(v) for v in pr_precision])


def _xyxy(box: np.ndarray) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def analyse(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]], class_names: Sequence[str],
            category_ids: Sequence[int], image_ids: Sequence[int] | None = None, *, iou: float = DEFAULT_IOU,
            score: float | None = None, gallery: int = GALLERY_SIZE, max_dets: int = MAX_DETS) -> ErrorAnalysis:
    """Analyse COCO ``detections`` (results format) against the COCO instances dict ``ground_truth`` on
    ``image_ids`` (default: every image), class ``class_names[k]`` being category ``category_ids[k]``.

    ``iou``: the IoU at which a detection counts as found for precision, recall, F1, the confusion matrix and
    the galleries (0.5 as COCO's AP50; DeepForest reports 0.4). ``score``: the threshold; None picks the one
    of best F1 over all classes pooled. ``gallery``: how many worst false detections and largest missed
    objects to list."""
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must lie in (0, 1], got {iou}")
    if score is not None and not 0.0 <= score <= 1.0:
        raise ValueError(f"score must lie in [0, 1], got {score}")
    names = [str(n) for n in class_names]
    if image_ids is None:
        image_ids = [int(im["id"]) for im in ground_truth.get("images", [])]
    images = group_by_image(ground_truth, detections, category_ids, image_ids, max_dets)
    coco_stats, coco_rows = coco_per_class(ground_truth, detections, category_ids, image_ids)
    matches = match(images, iou)
    classes = per_class(images, matches, len(names))
    sweeps = [_sweep(c.scores, c.true, c.num_gt) for c in classes]
    pooled = _sweep(np.concatenate([c.scores for c in classes]) if classes else np.zeros(0),
                    np.concatenate([c.true for c in classes]) if classes else np.zeros(0, bool),
                    sum(c.num_gt for c in classes))
    chosen_by = "given"
    if score is None:
        chosen_by = "best F1"
        score = pooled.best_f1()[1]
        if score is None:  # nothing detected (or nothing to find): every count is at the lowest threshold
            score = 0.0

    curves: dict[str, Curves] = {}
    rows = []
    for k, (name, c, sweep) in enumerate(zip(names, classes, sweeps)):
        ap, envelope = coco_ap(c.scores, c.true, c.num_gt)
        curves[name] = _curves(sweep, envelope)
        tp, fp, fn = sweep.at(score)
        precision, recall, f1 = _prf(tp, fp, fn)
        best, best_score = sweep.best_f1()
        rows.append(ClassRow(name, c.num_gt, tp + fp, coco_rows[k], _clean(ap), tp, fp, fn, precision, recall, f1,
                             best, best_score))
    mean_envelope = np.mean([curves[n].pr_precision for n, c in zip(names, classes) if c.num_gt > 0], axis=0) \
        if any(c.num_gt for c in classes) else np.zeros(len(RECALL_POINTS))
    curves["all"] = _curves(pooled, mean_envelope)
    tp, fp, fn = pooled.at(score)
    precision, recall, f1 = _prf(tp, fp, fn)
    best = pooled.best_f1()[0]
    overall = {"true_positives": tp, "false_positives": fp, "false_negatives": fn, "precision": precision,
               "recall": recall, "f1": f1, "best_f1": best, "num_gt": pooled.num_gt, "num_detections": tp + fp}

    confusion, dt_partner, gt_partner = _confusion(images, matches, score, len(names))
    reasons = classify_errors(images, matches, TIDE_BG_IOU)
    tide_result = tide(images, names, TIDE_FG_IOU, TIDE_BG_IOU)
    false_items, missed_items = _galleries(images, matches, reasons.dt_error, dt_partner, gt_partner, score, gallery)
    return ErrorAnalysis(names, float(iou), float(score), chosen_by, len(images), coco_stats, rows, overall, curves,
                         confusion, tide_result, false_items, missed_items, images)


def _confusion(images: Sequence[ImageBoxes], matches: Matches, score: float,
               num_classes: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The (K + 1)² confusion counts at ``score`` (see the module docstring), and per image the object each
    kept detection was paired with and the detection each object was paired with (-1: none; -2 for a
    detection below the score or in a crowd region)."""
    k = num_classes
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    dt_partner, gt_partner = [], []
    threshold = min(matches.iou, 1 - 1e-10)
    for i, im in enumerate(images):
        kept = (im.dt_scores >= score) & ~matches.dt_ignored[i]
        dt_to = np.where(kept, -1, -2).astype(np.int64)
        gt_to = np.full(im.num_gt, -1, dtype=np.int64)
        for d in np.flatnonzero(kept & (matches.dt_gt[i] >= 0)):  # same-class matches of the kept detections
            dt_to[d], gt_to[matches.dt_gt[i][d]] = matches.dt_gt[i][d], d
            counts[im.dt_labels[d], im.dt_labels[d]] += 1
        for d in np.flatnonzero(kept & (matches.dt_gt[i] < 0)):  # the rest, best first, against any class
            free = ~im.gt_crowd & (gt_to < 0) & (im.ious[d] >= threshold)
            if free.any():
                g = int(np.flatnonzero(free)[np.argmax(im.ious[d][free])])
                dt_to[d], gt_to[g] = g, d
                counts[im.gt_labels[g], im.dt_labels[d]] += 1
            else:
                counts[k, im.dt_labels[d]] += 1
        for lost in np.flatnonzero(~im.gt_crowd & (gt_to < 0)):
            counts[im.gt_labels[lost], k] += 1
        dt_partner.append(dt_to)
        gt_partner.append(gt_to)
    return counts, dt_partner, gt_partner


def _galleries(images: Sequence[ImageBoxes], matches: Matches, errors: list[np.ndarray], dt_partner: list[np.ndarray],
               gt_partner: list[np.ndarray], score: float, size: int) -> tuple[list[GalleryItem], list[GalleryItem]]:
    """The ``size`` highest scoring false detections (at any score) and the ``size`` largest objects missed at
    the chosen score (no detection of any class paired with them)."""
    false = [(-float(im.dt_scores[d]), i, int(d)) for i, im in enumerate(images)
             for d in np.flatnonzero(matches.false(i))]
    false.sort()
    items = []
    for _, i, d in false[:size]:
        im = images[i]
        objects = np.flatnonzero(~im.gt_crowd)
        item = GalleryItem(i, im.image_id, im.file_name, _xyxy(im.dt_boxes[d]), int(im.dt_labels[d]),
                           float(im.dt_scores[d]), ERROR_TYPES[errors[i][d]] if errors[i][d] != NO_ERROR else "")
        if len(objects) and im.ious[d, objects].max() > 0:
            g = int(objects[np.argmax(im.ious[d, objects])])
            item.other_box, item.other_label = _xyxy(im.gt_boxes[g]), int(im.gt_labels[g])
            item.other_iou = float(im.ious[d, g])
        items.append(item)
    missed = [(-float(im.gt_boxes[g, 2] * im.gt_boxes[g, 3]), i, int(g)) for i, im in enumerate(images)
              for g in np.flatnonzero(~im.gt_crowd & (gt_partner[i] < 0))]
    missed.sort()
    lost = []
    for _, i, g in missed[:size]:
        im = images[i]
        item = GalleryItem(i, im.image_id, im.file_name, _xyxy(im.gt_boxes[g]), int(im.gt_labels[g]), None, "missed")
        shown = np.flatnonzero(im.dt_scores >= score)
        if len(shown) and im.ious[shown, g].max() > 0:
            d = int(shown[np.argmax(im.ious[shown, g])])
            item.other_box, item.other_label = _xyxy(im.dt_boxes[d]), int(im.dt_labels[d])
            item.other_score, item.other_iou = float(im.dt_scores[d]), float(im.ious[d, g])
        lost.append(item)
    return items, lost
