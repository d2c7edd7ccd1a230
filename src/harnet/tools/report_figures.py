"""The pictures of an evaluation report, as PNG bytes: precision-recall and F1 curves, the confusion matrix,
TIDE's error bars (matplotlib's object API on the Agg canvas: no display, no global backend), and crops of
false detections and missed objects (PIL, drawn as ``harnet predict`` draws).

Every class keeps one colour everywhere (:data:`harnet.deploy.draw.CLASS_COLORS`, matplotlib's tab10), so a
line in a plot, a swatch in the table and a box in a crop of the same class look alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from harnet.deploy.draw import CLASS_COLORS, draw_detections
from harnet.engine.box_matching import RECALL_POINTS
from harnet.engine.error_analysis import SCORE_GRID, ErrorAnalysis, GalleryItem
from harnet.engine.tide import ERROR_TYPES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
CROP_SIDE = 200  # the longer side of a gallery crop, px: the page shows it at this size, its tags at 12 px
# Context around a gallery box: this fraction of its longer side on every side, at least CROP_MARGIN_PX.
CROP_CONTEXT = 0.6
CROP_MARGIN_PX = 12
# Classes drawn in a legend, and confusion matrices whose cells get their counts written in; beyond, too dense.
MAX_LEGEND = 20
MAX_ANNOTATED = 16
GT_COLOR = (255, 255, 255)
GT_EDGE = (0, 0, 0)


def class_color(label: int) -> tuple[int, int, int]:
    return CLASS_COLORS[label % len(CLASS_COLORS)]


def _rgb(label: int) -> tuple[float, float, float]:
    r, g, b = class_color(label)
    return r / 255, g / 255, b / 255


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _legend(ax: object, count: int) -> None:
    if count <= MAX_LEGEND:
        ax.legend(fontsize=9, loc="best", framealpha=0.85)  # type: ignore[attr-defined]


def pr_curves(analysis: ErrorAnalysis) -> bytes:
    """Precision (COCO's envelope) against recall per class at the report's IoU, each class's operating point
    (the chosen score) marked."""
    fig = _figure(6.4, 4.6)
    ax = fig.add_subplot()
    shown = 0
    for k, row in enumerate(analysis.classes):
        if row.num_gt == 0:
            continue
        curve = analysis.curves[row.name]
        ap = "-" if row.ap_iou is None else f"{row.ap_iou:.3f}"
        ax.plot(RECALL_POINTS, curve.pr_precision, color=_rgb(k), lw=2, label=f"{row.name} (AP {ap})")
        if row.recall is not None and row.precision is not None:
            ax.plot([row.recall], [row.precision], "o", color=_rgb(k), ms=8, mec="black", mew=1)
        shown += 1
    ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"Precision-recall at IoU {analysis.iou:g} (dots: score \u2265 {analysis.score:.2f})")
    ax.grid(alpha=0.3)
    _legend(ax, shown)
    return _png(fig)


def f1_curves(analysis: ErrorAnalysis, score_thresh: float | None = None) -> bytes:
    """Left: F1 against the score threshold per class and pooled, the chosen threshold marked. Right: pooled
    precision, recall and F1 against the threshold. ``score_thresh``: the model's own (no detection below it),
    shaded."""
    fig = _figure(11.0, 4.2)
    left, right = fig.subplots(1, 2)
    for k, row in enumerate(analysis.classes):
        if row.num_gt:
            left.plot(SCORE_GRID, _nan(analysis.curves[row.name].f1), color=_rgb(k), lw=1.6, label=row.name)
    pooled = analysis.curves["all"]
    if len(analysis.classes) > 1:
        left.plot(SCORE_GRID, _nan(pooled.f1), color="black", lw=2.4, label="all classes")
    right.plot(SCORE_GRID, _nan(pooled.precision), color="#1f77b4", lw=2, label="precision")
    right.plot(SCORE_GRID, _nan(pooled.recall), color="#d62728", lw=2, label="recall")
    right.plot(SCORE_GRID, _nan(pooled.f1), color="black", lw=2.4, label="F1")
    f1 = analysis.overall["f1"]
    for ax in (left, right):
        if score_thresh:
            ax.axvspan(0, score_thresh, color="0.85", lw=0)
        ax.axvline(analysis.score, color="0.3", ls="--", lw=1.2)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold")
        ax.grid(alpha=0.3)
    if f1 is not None:
        left.plot([analysis.score], [f1], "o", color="black", ms=8)
        left.annotate(f"F1 {f1:.3f} at {analysis.score:.2f}", (analysis.score, f1), xytext=(10, 12),
                      textcoords="offset points", fontsize=10,
                      bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.6", "alpha": 0.9})
    left.set(ylabel="F1", title=f"F1 against score threshold, IoU {analysis.iou:g}")
    right.set(title="all classes pooled")
    _legend(left, len(analysis.classes) + 1)
    right.legend(fontsize=9, loc="best", framealpha=0.85)
    return _png(fig)


def _nan(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def confusion(analysis: ErrorAnalysis) -> bytes:
    """The confusion matrix: each row coloured by its share of the row's total, counts written in."""
    counts = analysis.confusion
    k = len(counts)
    rows = [*analysis.class_names, "no object"]
    cols = [*analysis.class_names, "missed"]
    side = float(np.clip(1.2 + 0.55 * k, 4.2, 11.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
    if k <= MAX_ANNOTATED:
        for r in range(k):
            for c in range(k):
                if counts[r, c] or (r < k - 1 and c < k - 1 and r == c):
                    ax.text(c, r, str(counts[r, c]), ha="center", va="center", fontsize=10,
                            color="white" if share[r, c] > 0.55 else "black")
    size = 10 if k <= 20 else max(5.0, 200 / k)  # 80 classes still fit, smaller
    ax.set_xticks(range(k), cols, rotation=35 if k > 4 else 0, ha="right" if k > 4 else "center", fontsize=size)
    ax.set_yticks(range(k), rows, fontsize=size)
    ax.set(xlabel="detected as", ylabel="ground truth",
           title=f"Confusion at IoU {analysis.iou:g}, score \u2265 {analysis.score:.2f}")
    ax.axhline(k - 1.5, color="0.4", lw=1)
    ax.axvline(k - 1.5, color="0.4", lw=1)
    return _png(fig)


def tide_bars(analysis: ErrorAnalysis) -> bytes:
    """What fixing each TIDE error type would add to the mean AP at t_f (the six types, then the two bounds)."""
    result = analysis.tide
    labels = [*ERROR_TYPES, "all false positives", "all false negatives"]
    values = [result.dap[t] for t in ERROR_TYPES] + [result.dap_false_positives, result.dap_false_negatives]
    counts = [result.counts[t] for t in ERROR_TYPES] + [None, None]
    colors = ["#4a5d7e"] * len(ERROR_TYPES) + ["#b8bec8"] * 2  # not the class colours: these are no classes
    fig = _figure(6.4, 3.9)
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=colors)
    top = max([*values, 0.01])
    for yy, value, count in zip(y, values, counts):
        text = f"+{value:.3f}" + ("" if count is None else f"  ({count})")
        ax.text(value + top * 0.02, yy, text, va="center", fontsize=10)
    ax.set_yticks(y, labels)
    ax.set(xlim=(0, top * 1.35), xlabel=f"AP{round(100 * result.t_f)} gained if fixed (dAP)",
           title=f"TIDE errors (t_f {result.t_f:g}, t_b {result.t_b:g}): dAP and count")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def crop(pixels: np.ndarray, item: GalleryItem, analysis: ErrorAnalysis, side: int = CROP_SIDE) -> Image.Image:
    """A gallery picture: the region around ``item`` from ``pixels`` (H, W, 3 uint8), scaled to ``side`` px on
    its longer side, ground truth as white boxes (the item's object thicker) and detections as ``harnet
    predict`` draws them, in their class colour with "name score" tags: for a false detection, itself; for a
    missed object, the detections at or above the report's score that overlap it."""
    height, width = pixels.shape[:2]
    x0, y0, x1, y1 = item.box
    if item.other_box is not None:
        x0, y0 = min(x0, item.other_box[0]), min(y0, item.other_box[1])
        x1, y1 = max(x1, item.other_box[2]), max(y1, item.other_box[3])
    margin = max(CROP_CONTEXT * max(x1 - x0, y1 - y0), CROP_MARGIN_PX)
    left, top = int(max(0, np.floor(x0 - margin))), int(max(0, np.floor(y0 - margin)))
    right, bottom = int(min(width, np.ceil(x1 + margin))), int(min(height, np.ceil(y1 + margin)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    scale = side / max(right - left, bottom - top)
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    picture = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right])).resize(
        size, Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.LANCZOS)

    def place(box: Sequence[float]) -> list[float]:
        return [(box[0] - left) * scale, (box[1] - top) * scale, (box[2] - left) * scale, (box[3] - top) * scale]

    im = analysis.images[item.image]
    draw = ImageDraw.Draw(picture)
    is_missed = item.score is None
    for g in np.flatnonzero(~im.gt_crowd):
        x, y, w, h = im.gt_boxes[g]
        box = place([x, y, x + w, y + h])
        if box[2] < 0 or box[3] < 0 or box[0] > size[0] or box[1] > size[1]:
            continue
        focal = is_missed and np.allclose([x, y, x + w, y + h], item.box)
        width_px = 4 if focal else 2
        draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], outline=GT_EDGE, width=width_px + 2)
        draw.rectangle(box, outline=GT_COLOR, width=width_px)
    if is_missed:
        shown = [d for d in range(im.num_dt) if im.dt_scores[d] >= analysis.score
                 and _overlaps(im.dt_boxes[d], item.box)]
        boxes = np.array([place(_xyxy(im.dt_boxes[d])) for d in shown]).reshape(-1, 4)
        labels, scores = [int(im.dt_labels[d]) for d in shown], [float(im.dt_scores[d]) for d in shown]
    else:
        assert item.score is not None
        boxes, labels, scores = np.array([place(item.box)]), [item.label], [item.score]
    chw = np.asarray(picture).transpose(2, 0, 1)
    return draw_detections(chw, boxes, labels, scores, analysis.class_names, min_size=1)


def _xyxy(box: np.ndarray) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _overlaps(xywh: np.ndarray, xyxy: Sequence[float]) -> bool:
    x, y, w, h = (float(v) for v in xywh)
    return x < xyxy[2] and xyxy[0] < x + w and y < xyxy[3] and xyxy[1] < y + h


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
