"""COCO-style box evaluation of detector predictions.

The numbers come from ``pycocotools.cocoeval.COCOeval`` itself, not from a re-implementation, so that
they can be compared with published COCO results without caveats. This module only adds what
pycocotools lacks for day-to-day use:

* conversion of model outputs (XYXY boxes, contiguous labels) into the COCO results format;
* a zero-detection path (``COCO.loadRes([])`` crashes, yet an untrained model often detects nothing);
* per-class AP, a readable table and a JSON dump, with pycocotools' console chatter silenced.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from harnet.utils.atomic import write_text_atomic

# What ``harnet eval`` writes into its output folder (and replaces as a set on the next evaluation there).
EVAL_OUTPUTS = ("metrics.json", "detections.json", "skipped.json", "skipped.txt", "report.html", "report.json")

# The 12 entries of ``COCOeval.stats`` for iouType="bbox", in pycocotools' order.
STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip


def to_coco_results(
    image_ids: Sequence[int],
    predictions: Sequence[dict[str, Tensor]],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Convert per-image predictions into the COCO detection results format.

    ``predictions[i]`` belongs to ``image_ids[i]`` and holds ``boxes`` (n, 4) XYXY in original image
    pixels, ``scores`` (n,) and ``labels`` (n,) as contiguous class indices; ``category_ids`` maps a
    contiguous label back to the (possibly sparse) dataset category id that COCO expects.

    Boxes are converted in float64 and kept at full precision as Python floats (no rounding), so
    that evaluating these results here, or after a JSON round trip, gives exactly the same numbers
    as running pycocotools on them directly.
    """
    if len(image_ids) != len(predictions):
        raise ValueError(f"{len(image_ids)} image ids but {len(predictions)} predictions")
    cat_ids = [int(c) for c in category_ids]
    results: list[dict[str, Any]] = []
    for image_id, pred in zip(image_ids, predictions, strict=True):
        boxes = torch.as_tensor(pred["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"]).detach().to("cpu", torch.float64).reshape(-1)
        labels = torch.as_tensor(pred["labels"]).detach().to("cpu", torch.int64).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(
                f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(cat_ids)):
            raise ValueError(
                f"image {image_id}: labels must lie in [0, {len(cat_ids)}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        for box, score, label in zip(xywh.tolist(), scores.tolist(), labels.tolist(), strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": cat_ids[label],
                    "bbox": box,
                    "score": score,
                }
            )
    return results


def _fmt(value: float, width: int) -> str:
    """Format a metric as a percentage; undefined values (NaN, or pycocotools' -1) show as '-'."""
    if math.isnan(value) or value < 0:
        return "-".center(width)
    return f"{100.0 * value:.3f}".center(width)


@dataclass
class EvalResult:
    """Outcome of a COCO box evaluation.

    ``stats`` holds the 12 ``COCOeval.stats`` values verbatim (fractions in [0, 1]; -1 where
    pycocotools finds the metric undefined, e.g. APs with no small ground truth), keyed by
    ``STAT_NAMES``. ``per_class_ap`` maps a class name to its AP@[.5:.95] (area all, 100 dets),
    NaN for a class without ground truth in the evaluated images, since its AP is undefined rather
    than zero and must not be averaged in.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float] = field(default_factory=dict)
    num_images: int = 0
    num_detections: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict that ``json.dumps`` accepts with strict JSON (NaN becomes ``None``)."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "stats": {k: clean(v) for k, v in self.stats.items()},
            "per_class_ap": {k: clean(v) for k, v in self.per_class_ap.items()},
            "num_images": int(self.num_images),
            "num_detections": int(self.num_detections),
        }

    def save_json(self, path: str | Path) -> None:
        """Write ``to_dict()`` to ``path`` atomically (parents created), for comparing runs after the fact."""
        write_text_atomic(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", path)

    def table(self, columns: int = 3) -> str:
        """Fixed-width text table of the main stats then per-class AP (in percent, as detectron2
        prints them), meant for logs, where a row of 12 raw floats is hard to read."""
        lines = [f"COCO bbox evaluation: {self.num_images} images, {self.num_detections} detections"]
        width = 9
        sep = "+" + "+".join("-" * width for _ in range(6)) + "+"
        lines.append(sep)
        for names in (STAT_NAMES[:6], STAT_NAMES[6:]):
            lines += [
                "|" + "|".join(n.center(width) for n in names) + "|",
                "|" + "|".join(_fmt(self.stats.get(n, math.nan), width) for n in names) + "|",
                sep,
            ]
        if self.per_class_ap:
            items = list(self.per_class_ap.items())
            columns = max(1, min(columns, len(items)))
            name_w = max(len("category"), *(len(n) for n, _ in items)) + 2
            sep = "+" + "+".join(["-" * name_w + "+" + "-" * width] * columns) + "+"
            header = " category".ljust(name_w) + "|" + "AP".center(width)
            lines += ["", sep, "|" + "|".join([header] * columns) + "|", sep]
            for start in range(0, len(items), columns):
                row = items[start : start + columns]
                cells = [f" {n}".ljust(name_w) + "|" + _fmt(ap, width) for n, ap in row]
                cells += [" " * name_w + "|" + " " * width] * (columns - len(row))
                lines.append("|" + "|".join(cells) + "|")
            lines.append(sep)
        return "\n".join(lines)

    def summary_table(self) -> str:
        """A short table for the end of a run: AP, AP50, AP75, then each class's AP@[.5:.95] (from
        pycocotools' precision array, as in ``per_class_ap``), as fractions like the headline AP."""

        def frac(value: float) -> str:
            return "    -" if math.isnan(value) or value < 0 else f"{value:.3f}"

        names = list(self.per_class_ap)
        width = max([len("AP@[.5:.95]"), *(len(n) for n in names)]) + 2
        lines = [f"COCO box AP: {self.num_images} images, {self.num_detections} detections",
                 f"  {'AP@[.5:.95]'.ljust(width)}{frac(self.stats.get('AP', math.nan))}",
                 f"  {'AP50'.ljust(width)}{frac(self.stats.get('AP50', math.nan))}",
                 f"  {'AP75'.ljust(width)}{frac(self.stats.get('AP75', math.nan))}"]
        if names:
            lines.append("  per class, AP@[.5:.95]:")
            lines += [f"    {n.ljust(width - 2)}{frac(ap)}" for n, ap in self.per_class_ap.items()]
        return "\n".join(lines)


def _empty_results(coco_gt: COCO) -> COCO:
    """A results object with no detections, built by hand because ``COCO.loadRes([])`` fails on
    ``anns[0]``. COCOeval then scores 0 wherever ground truth exists and -1 (undefined) elsewhere,
    exactly as it would with detections that all miss."""
    dt = COCO()
    dt.dataset = {
        "info": copy.deepcopy(coco_gt.dataset.get("info", {})),
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    dt.createIndex()
    return dt


def evaluate_coco(
    coco_gt: COCO,
    results: list[dict[str, Any]],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    image_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Score COCO-format ``results`` against ``coco_gt`` with pycocotools' COCOeval ("bbox").

    ``image_ids`` restricts the evaluation to those images (``params.imgIds``), so that a subset
    of a dataset is not penalised for the ground truth of images it never saw; by default all
    ground-truth images count. ``class_names[i]`` names ``category_ids[i]``. pycocotools' prints
    are swallowed; its numbers are returned unchanged. ``results`` is not modified.
    """
    if len(class_names) != len(category_ids):
        raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
    gt_img_ids = set(coco_gt.getImgIds())
    unknown = sorted({int(r["image_id"]) for r in results} - gt_img_ids)
    if unknown:
        raise ValueError(f"results refer to image ids absent from the ground truth: {unknown[:10]}")

    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys (area, id, segmentation, iscrowd) to each dict: give it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_results(coco_gt)
        cocoeval = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            cocoeval.params.imgIds = sorted({int(i) for i in image_ids})
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()

    eval_img_ids = set(cocoeval.params.imgIds)
    stats = {name: float(v) for name, v in zip(STAT_NAMES, cocoeval.stats.tolist(), strict=True)}

    # precision: [T iou, R recall, K category, A area, M maxDets]; area "all" = 0, maxDets 100 = -1.
    precision = cocoeval.eval["precision"]
    eval_cat_ids = list(cocoeval.params.catIds)
    per_class_ap: dict[str, float] = {}
    for name, cat_id in zip(class_names, category_ids, strict=True):
        ap = math.nan
        if int(cat_id) in eval_cat_ids:
            p = precision[:, :, eval_cat_ids.index(int(cat_id)), 0, -1]
            valid = p[p > -1]
            if valid.size:
                ap = float(np.mean(valid))
        per_class_ap[str(name)] = ap

    return EvalResult(
        stats=stats,
        per_class_ap=per_class_ap,
        num_images=len(eval_img_ids),
        num_detections=sum(1 for r in results if int(r["image_id"]) in eval_img_ids),
    )


def evaluate_predictions(
    dataset: Any,
    image_ids: Sequence[int],
    predictions: Sequence[dict[str, Tensor]],
) -> EvalResult:
    """Evaluate model ``predictions`` (one dict per entry of ``image_ids``) on ``dataset``.

    ``dataset`` needs ``coco`` (ground-truth ``COCO``), ``category_ids`` and ``class_names``. Only
    the listed images are scored, so evaluating on a slice of a dataset gives that slice's numbers.
    """
    results = to_coco_results(image_ids, predictions, dataset.category_ids)
    return evaluate_coco(
        dataset.coco, results, dataset.class_names, dataset.category_ids, image_ids=image_ids
    )
