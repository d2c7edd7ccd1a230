"""TIDE's error types and what each costs in AP (Bolya et al., "TIDE: A General Toolbox for Identifying
Object Detection Errors", ECCV 2020), in numpy.

tidecv, the authors' package, is unmaintained (and needs OpenCV); this is a small re-implementation of its
box mode following its definitions, on top of COCO's matching (:mod:`harnet.engine.box_matching`), so that
the AP every fix starts from is COCO's AP at the foreground IoU. A detection that matches no object at the
foreground IoU ``t_f`` is, tested in this order (as tidecv does):

1. *background* when its image has no object at all;
2. *localisation* when its best IoU with an object of its class lies in [t_b, t_f];
3. *classification* when it overlaps an object of another class by at least t_f;
4. *duplicate* when it overlaps an already matched object of its class by at least t_f;
5. *background* when it overlaps no object by more than t_b;
6. *both* (wrong class and poorly placed) otherwise.

An object no detection matched is *missed* unless a classification or localisation error could have
found it. The dAP of a type is the mean AP after an oracle fixes every error of that type, minus the
mean AP before (never below 0): a classification or localisation error becomes a true positive (the best
scoring one per object, the object still unmatched; the others are removed), duplicates, background and
"both" errors are removed, and missed objects are taken out of the object count. Two more oracles bound
the whole: removing every false positive, and taking every unmatched object out of the count.

Where this differs from tidecv: the ``max_dets`` limit is per image and class (COCO's, so the starting AP
is COCO's), not per image; a class without objects is left out of the mean (COCO), where tidecv counts it
as 0; dAP is a fraction like every AP in harnet, not AP points; detections of equal score keep COCO's order
after a fix, where tidecv lists the fixed ones first (so with ties its dAP can come out lower). Otherwise the
counts and dAPs are tidecv's (compared on random cases with distinct scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harnet.engine.box_matching import ImageBoxes, Matches, coco_ap, match

TIDE_FG_IOU = 0.5  # t_f
TIDE_BG_IOU = 0.1  # t_b
# The error types in TIDE's order; the first five are kinds of false detection, the last of missed object.
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
CLS, LOC, BOTH, DUPE, BKG = range(5)
NO_ERROR = -1


@dataclass
class ErrorTypes:
    """Per image (lists parallel to the images): ``dt_error[i][d]`` the type of detection ``d``'s error as an
    index into :data:`ERROR_TYPES` (:data:`NO_ERROR` for a true or ignored detection), ``dt_target[i][d]`` the
    object a classification or localisation error is about (-1 else), ``dt_fixable[i][d]`` whether the oracle
    turns that error into a true positive, ``gt_missed[i][g]`` whether object ``g`` is a missed error."""

    t_f: float
    t_b: float
    dt_error: list[np.ndarray]
    dt_target: list[np.ndarray]
    dt_fixable: list[np.ndarray]
    gt_missed: list[np.ndarray]

    def counts(self) -> dict[str, int]:
        """How many errors of each type."""
        codes = np.concatenate([np.zeros(0, np.int64), *self.dt_error])
        out = {name: int((codes == k).sum()) for k, name in enumerate(ERROR_TYPES[:5])}
        out["missed"] = int(sum(int(m.sum()) for m in self.gt_missed))
        return out


def classify_errors(images: Sequence[ImageBoxes], matches: Matches, t_b: float = TIDE_BG_IOU) -> ErrorTypes:
    """The TIDE type of every false detection and missed object under ``matches`` (``t_f`` is their IoU)."""
    t_f = matches.iou
    errors, targets, fixable, missed = [], [], [], []
    for i, im in enumerate(images):
        error = np.full(im.num_dt, NO_ERROR, dtype=np.int64)
        target = np.full(im.num_dt, -1, dtype=np.int64)
        objects = np.flatnonzero(~im.gt_crowd)  # crowd regions only excuse detections, they are not objects
        used = matches.gt_dt[i][objects] >= 0
        iou = im.ious[:, objects]
        same = im.dt_labels[:, None] == im.gt_labels[objects][None, :]
        for d in np.flatnonzero(matches.false(i)).tolist():
            if not len(objects):
                error[d] = BKG
                continue
            same_iou = iou[d] * same[d]
            other_iou = iou[d] * ~same[d]
            if t_b <= same_iou.max() <= t_f:
                error[d], target[d] = LOC, objects[int(np.argmax(same_iou))]
            elif other_iou.max() >= t_f:
                error[d], target[d] = CLS, objects[int(np.argmax(other_iou))]
            elif (same_iou * used).max() >= t_f:
                error[d] = DUPE
            elif iou[d].max() <= t_b:
                error[d] = BKG
            else:
                error[d] = BOTH
        # One fix per object: the best scoring classification or localisation error about a still unmatched one.
        best = np.zeros(im.num_dt, dtype=bool)
        usable = np.zeros(im.num_gt, dtype=bool)
        for d in range(im.num_dt):  # score order: the first about an object is its best
            g = int(target[d])
            if g >= 0 and matches.gt_dt[i][g] < 0 and not usable[g]:
                usable[g] = best[d] = True
        errors.append(error)
        targets.append(target)
        fixable.append(best)
        missed.append(~im.gt_crowd & (matches.gt_dt[i] < 0) & ~usable)
    return ErrorTypes(t_f, t_b, errors, targets, fixable, missed)


@dataclass
class TideResult:
    """TIDE's summary: the mean AP at ``t_f`` the oracles start from, error counts, the dAP of each type
    (:data:`ERROR_TYPES`), and of the two bounding oracles (every false positive removed; every missed or
    mislocated object taken out of the count)."""

    t_f: float
    t_b: float
    ap: float
    counts: dict[str, int]
    dap: dict[str, float]
    dap_false_positives: float
    dap_false_negatives: float
    per_class_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"t_f": self.t_f, "t_b": self.t_b, "ap": _clean(self.ap), "counts": dict(self.counts),
                "dap": {k: _clean(v) for k, v in self.dap.items()},
                "dap_false_positives": _clean(self.dap_false_positives),
                "dap_false_negatives": _clean(self.dap_false_negatives),
                "per_class_counts": self.per_class_counts}


def _clean(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def tide(images: Sequence[ImageBoxes], class_names: Sequence[str], t_f: float = TIDE_FG_IOU,
         t_b: float = TIDE_BG_IOU) -> TideResult:
    """Classify every error at (``t_f``, ``t_b``) and measure what fixing each type would add to the mean AP."""
    matches = match(images, t_f)
    types = classify_errors(images, matches, t_b)
    # Every detection that counts (ignored ones never do), in COCOeval's order: images by id, each best first.
    rows = [(i, d) for i, im in enumerate(images) for d in range(im.num_dt) if not matches.dt_ignored[i][d]]
    img = np.array([r[0] for r in rows], dtype=np.int64)
    det = np.array([r[1] for r in rows], dtype=np.int64)

    def gather(per_image: list[np.ndarray]) -> np.ndarray:
        return np.array([per_image[i][d] for i, d in rows], dtype=per_image[0].dtype if per_image else np.int64)

    labels = gather([im.dt_labels for im in images])
    scores = gather([im.dt_scores for im in images]).astype(np.float64)
    true = gather([matches.dt_gt[i] >= 0 for i in range(len(images))]).astype(bool)
    error = gather(types.dt_error)
    fixable = gather(types.dt_fixable).astype(bool)
    target_label = np.array([images[i].gt_labels[types.dt_target[i][d]] if types.dt_target[i][d] >= 0 else -1
                             for i, d in zip(img, det)], dtype=np.int64)
    num_classes = len(class_names)
    num_gt = np.zeros(num_classes, dtype=np.int64)
    missed = np.zeros(num_classes, dtype=np.int64)
    for i, im in enumerate(images):
        objects = ~im.gt_crowd
        num_gt += np.bincount(im.gt_labels[objects], minlength=num_classes)
        missed += np.bincount(im.gt_labels[types.gt_missed[i]], minlength=num_classes)
    scored = [c for c in range(num_classes) if num_gt[c] > 0]  # COCO's mean: classes with objects

    def mean_ap(keep: np.ndarray, labels: np.ndarray, true: np.ndarray, num_gt: np.ndarray) -> float:
        if not scored:
            return float("nan")
        aps = []
        for c in scored:
            sel = keep & (labels == c)
            aps.append(coco_ap(scores[sel], true[sel], int(num_gt[c]))[0] if num_gt[c] > 0 else 0.0)
        return float(np.mean(aps))

    everything = np.ones(len(rows), dtype=bool)
    base = mean_ap(everything, labels, true, num_gt)
    dap: dict[str, float] = {}
    for code, name in enumerate(ERROR_TYPES[:5]):
        hit = error == code
        if code in (CLS, LOC):
            fixed = hit & fixable
            new_labels = np.where(fixed, target_label, labels)
            new = mean_ap(everything & ~(hit & ~fixed), new_labels, true | fixed, num_gt)
        else:
            new = mean_ap(~hit, labels, true, num_gt)
        dap[name] = max(new - base, 0.0)
    dap["missed"] = max(mean_ap(everything, labels, true, num_gt - missed) - base, 0.0)
    found = np.bincount(labels[true], minlength=num_classes) if len(labels) else np.zeros(num_classes, np.int64)
    dap_fp = max(mean_ap(true, labels, true, num_gt) - base, 0.0)
    dap_fn = max(mean_ap(everything, labels, true, found) - base, 0.0)

    per_class: dict[str, dict[str, int]] = {}
    for c, name in enumerate(class_names):
        row = {t: int(((error == k) & (labels == c)).sum()) for k, t in enumerate(ERROR_TYPES[:5])}
        per_class[str(name)] = row | {"missed": int(missed[c])}
    return TideResult(t_f, t_b, base, types.counts(), dap, dap_fp, dap_fn, per_class)
