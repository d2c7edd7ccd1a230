"""Detections from the exported network's outputs in numpy: per-level top-k, decoding, NMS or
Gaussian Soft-NMS, box voting.

The one suppression of harnet: the torch-free runtime, the prediction path of every backend (PyTorch,
onnxruntime, OpenVINO, a device without torch), and, through :func:`harnet.modeling.postprocess.suppress`,
training-time evaluation and test-time augmentation too, so that what training measures is what ships.
Candidate selection (:func:`select_candidates`, :func:`decode`) has a torch twin in
:mod:`harnet.modeling.postprocess`, which reduces the dense GPU outputs before they cross to the host;
the two are tested equal. The tests hold Soft-NMS and voting to literal one-at-a-time references.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from harnet.config.model import InferenceConfig

SOFT_NMS_MIN_SCORE = 1e-3  # the authors' (and Detectron's) Soft-NMS drops boxes whose decayed score falls below this
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


_TINY = np.float32(np.finfo(np.float32).tiny)


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box i of ``a`` with box i of ``b``, both (5, m) rows x1, y1, x2, y2, area -> (m,): ``box_iou``'s
    float32 arithmetic, with 0 (not 0/0) for two empty boxes."""
    inter = np.minimum(a[2], b[2])
    inter -= np.maximum(a[0], b[0])
    np.maximum(inter, 0, out=inter)
    h = np.minimum(a[3], b[3])
    h -= np.maximum(a[1], b[1])
    np.maximum(h, 0, out=h)
    inter *= h  # in place: the same float32 operations, fewer temporaries
    union = a[4] + b[4]
    union -= inter
    np.maximum(union, _TINY, out=union)
    inter /= union
    return inter


def _by_class(labels: np.ndarray) -> np.ndarray:
    """Indices of the boxes as a (classes, most boxes of a class) table, -1 where empty, ascending
    within a class."""
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


class _Grid(NamedTuple):
    """The candidates by place, to find the pairs that overlap without comparing every two boxes.

    A square grid is laid over the candidates and each is registered in every cell its box touches. Two
    overlapping boxes both touch the cell holding the top-left corner of their intersection (the larger of
    their first columns, the larger of their first rows), and a query takes each candidate from that cell
    only: outside its own first column it takes only candidates whose first column the cell is in, outside
    its own first row only those whose first row it is in. The registrations are sorted by (kind, class,
    row, column), the kind (1 if the cell is not in the box's first column) + (2 if not in its first row),
    so what a query takes from one grid row is a few contiguous runs."""

    key: np.ndarray  # (R,) sorted: ((kind * classes + class code) * rows + row) * cols + col
    box: np.ndarray  # (R,) the candidate registered
    origin: tuple[float, float]
    cell: float
    cols: int
    rows: int
    label_values: np.ndarray  # the distinct labels, sorted: a label's class code is its position
    coords: np.ndarray  # (5, n) the candidates' x1, y1, x2, y2 and area, for the IoUs
    registered: np.ndarray  # (5, R) the same for each registration, so a query reads them in runs
    starts: np.ndarray | None  # (keys + 1,) where each key's registrations start, unless there are too many keys


_DENSE_KEYS = 1 << 16  # runs are looked up in a table of every cell key up to this many keys (or 8 per registration)


def _cell_starts(key: np.ndarray, keys: int) -> np.ndarray | None:
    """Where each cell key's registrations start in the sorted ``key`` (and where the last one ends), or
    None when there are too many keys for a table (the runs are then binary searched)."""
    if keys > max(_DENSE_KEYS, 8 * key.size):
        return None
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(np.bincount(key, minlength=keys))])


def _cell_span(boxes: np.ndarray, origin: tuple[float, float], cell: float, cols: int,
               rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each box's first and last grid column and row (clipped to one cell beyond the grid) and whether
    its coordinates are finite. The cell of a coordinate only ever grows with it and is the same function
    for candidates and queries: finding the overlaps needs nothing more of it."""
    b = boxes.astype(np.float64)
    finite = np.asarray(np.isfinite(b).all(axis=1))
    b = np.where(finite[:, None], b, 0.0)
    x = np.clip(np.floor((b[:, 0::2] - origin[0]) / cell), -1, cols).astype(np.int64)
    y = np.clip(np.floor((b[:, 1::2] - origin[1]) / cell), -1, rows).astype(np.int64)
    return x[:, 0], y[:, 0], x[:, 1], y[:, 1], finite


def _coords(boxes: np.ndarray) -> np.ndarray:
    b = boxes.astype(np.float32)
    return np.stack([b[:, 0], b[:, 1], b[:, 2], b[:, 3], box_area(b)])


def _grid(boxes: np.ndarray, labels: np.ndarray) -> _Grid:
    """A :class:`_Grid` over ``boxes``, its cell about a typical box's side (a box touches a few cells)."""
    label_values, codes = np.unique(labels, return_inverse=True)
    codes = codes.ravel()
    b = boxes.astype(np.float64)
    b = b[np.isfinite(b).all(axis=1)]
    origin, cell = (0.0, 0.0), 1.0
    if b.shape[0]:
        origin = (float(b[:, 0].min()), float(b[:, 1].min()))
        sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        span = max(float(b[:, 2].max()) - origin[0], float(b[:, 3].max()) - origin[1])
        cell = max(float(np.median(sides)), float(sides.max()) / 8, span / 1024)
        if not (math.isfinite(cell) and cell > 0):
            cell = 1.0
    c1, r1, c2, r2, finite = _cell_span(boxes, origin, cell, 1 << 30, 1 << 30)
    cols = int(c2[finite].max()) + 1 if finite.any() else 1
    rows = int(r2[finite].max()) + 1 if finite.any() else 1
    ncol = np.maximum(c2 - c1 + 1, 1)
    reps = np.where(finite & (c2 >= c1) & (r2 >= r1), ncol * (r2 - r1 + 1), 0)
    box = np.repeat(np.arange(boxes.shape[0]), reps)
    k = np.arange(box.size) - np.repeat(np.cumsum(reps) - reps, reps)
    col_off, row_off = k % ncol[box], k // ncol[box]
    kind = (col_off > 0) + 2 * (row_off > 0)
    key = (((kind * label_values.size + codes[box]) * rows + r1[box] + row_off) * cols) + c1[box] + col_off
    keys = 4 * label_values.size * rows * cols
    order = np.argsort(key.astype(np.uint16) if keys <= 1 << 16 else key, kind="stable")  # uint16: a radix sort
    coords = _coords(boxes)
    return _Grid(key[order], box[order], origin, cell, cols, rows, label_values, coords,
                 np.take(coords, box[order], axis=1), _cell_starts(key, keys))


class _Runs(NamedTuple):
    """For each query box, the runs of :class:`_Grid` registrations that hold its overlap candidates."""

    start: np.ndarray  # (m + 1,) query i's runs are start[i]:start[i + 1]
    lo: np.ndarray  # (M,) a run's first registration
    length: np.ndarray  # (M,) and its length
    coords: np.ndarray  # (5, m) the queries' x1, y1, x2, y2 and area


def _runs(grid: _Grid, query_boxes: np.ndarray, query_labels: np.ndarray) -> _Runs:
    """The runs of each query: per grid row it spans, its first column and the rest, each split by kind,
    a run kept only where that kind of cell can be the corner cell of a pair (away from the query's own
    first column a candidate must start in the column, away from its first row in the row)."""
    values = grid.label_values
    code = np.minimum(np.searchsorted(values, query_labels), max(values.size - 1, 0))
    known = values[code] == query_labels if values.size else np.zeros(query_labels.shape, dtype=bool)
    c1, r1, c2, r2, finite = _cell_span(query_boxes, grid.origin, grid.cell, grid.cols, grid.rows)
    lo_c, hi_c = np.maximum(c1, 0), np.minimum(c2, grid.cols - 1)
    lo_r, hi_r = np.maximum(r1, 0), np.minimum(r2, grid.rows - 1)
    nrow = np.where(known & finite & (hi_c >= lo_c) & (hi_r >= lo_r), hi_r - lo_r + 1, 0)
    q = np.repeat(np.arange(query_boxes.shape[0]), nrow)
    row = np.take(lo_r, q) + np.arange(q.size) - np.repeat(np.cumsum(nrow) - nrow, nrow)
    base = (np.take(code, q) * grid.rows + row) * grid.cols
    first, last = base + np.take(lo_c, q), base + np.take(hi_c, q)
    need_col = np.stack([~np.take(lo_c == c1, q), np.ones(q.size, dtype=bool)], axis=1)[:, :, None]
    need_row = (row != np.take(r1, q))[:, None, None]
    kind = np.arange(4)
    allowed = ((kind % 2 == 0) | ~need_col) & ((kind < 2) | ~need_row)
    kinds = kind * (values.size * grid.rows * grid.cols)
    allowed = allowed.ravel()
    lows = (np.stack([first, first + 1], axis=1)[:, :, None] + kinds).ravel()[allowed]
    highs = (np.stack([first, last], axis=1)[:, :, None] + kinds).ravel()[allowed]
    if grid.starts is not None:
        lo, hi = np.take(grid.starts, lows), np.take(grid.starts, np.minimum(highs + 1, grid.starts.size - 1))
    else:
        lo, hi = np.searchsorted(grid.key, lows), np.searchsorted(grid.key, highs, side="right")
    count = hi - lo
    used = count > 0
    owner = np.repeat(q, 8)[allowed][used]
    start = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(np.bincount(owner, minlength=query_boxes.shape[0]))])
    return _Runs(start, lo[used], count[used], _coords(query_boxes))


def _pairs(grid: _Grid, runs: _Runs, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, candidate) of the same class with IoU > 0, for the queries ``queries`` of ``runs``:
    (position in ``queries``, candidate, IoU), each pair once, grouped by query."""
    first = runs.start.take(queries)
    nrun = runs.start.take(queries + 1) - first
    # (ndarray methods rather than numpy functions: this runs at every Soft-NMS step, on small arrays)
    run_query = np.arange(queries.size).repeat(nrun)
    run = np.arange(run_query.size) + (first - (nrun.cumsum() - nrun)).repeat(nrun)
    count = runs.length.take(run)
    position = np.arange(int(count.sum())) + (runs.lo.take(run) - (count.cumsum() - count)).repeat(count)
    # A query's coordinates repeated along its runs, the candidates' read by registration: fewer gathers.
    iou = _pair_iou(runs.coords.take(queries.take(run_query), axis=1).repeat(count, axis=1),
                    grid.registered.take(position, axis=1))
    near = (iou > 0).nonzero()[0]
    return run_query.repeat(count).take(near), grid.box.take(position.take(near)), iou.take(near)


SOFT_NMS_BLOCK = 64  # the best remaining candidates per class examined per step of the batched Soft-NMS


def soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float,
             max_keep: int | None = None, min_score: float = SOFT_NMS_MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS per class: pick the best box, decay the others by exp(-IoU^2 / sigma), repeat
    until every remaining score is below ``min_score`` (the authors' ``cpu_soft_nms``, method 2).

    Returns (indices, decayed scores), sorted by decayed score, ties by index: the order one pick at a
    time gives (a tie between two boxes goes to the lower index). With ``max_keep``, the best
    ``max_keep`` of all; since a class's picks come by decreasing score, a class stops after its first
    ``max_keep``.

    Why batched: picking one box per step makes the loop as long as the candidate list (thousands of
    steps for a dense image). The decay is exp(-IoU^2 / sigma), exactly 1 for boxes that do not overlap,
    so a box's score changes only with the picks of boxes overlapping it: once no waiting box that
    overlaps it ranks higher (score, then lower index), nothing can change its score before its turn,
    and it is picked with that score. Each step takes the ``SOFT_NMS_BLOCK`` best remaining boxes of
    every class (so every box that outranks a block box is in the block) and resolves them in rounds: a
    round picks every block box that outranks its waiting overlapping block boxes and the best box
    outside the block (which can only decay further), and decays the rest of the block by those picks;
    later rounds pick what those picks freed, until the rest ranks below the best box outside. All of a
    step's picks come before any later one. They then decay every candidate overlapping them, found
    through a grid over the candidates (:class:`_Grid`) rather than against every box of the class.
    The picks, their order and their scores are the one-at-a-time algorithm's, up to float rounding of
    the decay products.
    """
    keep, kept, _ = _soft_nms(boxes, scores, labels, sigma, max_keep, min_score, None)
    return keep, kept


def _soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float, max_keep: int | None,
              min_score: float, pair_iou_min: float | None
              ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """:func:`soft_nms`, and the pairs (pick, candidate, IoU) whose decay it applied with IoU >=
    ``pair_iou_min`` (> 0; None: none): with ``max_keep`` None, every kept box with every candidate it
    overlaps that much (what voting needs; only those are kept, as collecting them all costs more than
    the rest of the step)."""
    n = boxes.shape[0]
    none = np.empty(0, dtype=np.int64)
    if n == 0:
        return none, np.empty(0, dtype=np.float32), (none, none, np.empty(0, dtype=np.float32))
    grid = _grid(boxes, labels)
    runs = _runs(grid, boxes, labels)
    # Picked boxes are marked -1 and decay by factors in [0, 1] keeps them <= 0: the floor must be above 0.
    floor = np.float32(max(min_score, float(_TINY)))
    sigma32 = np.float32(sigma)
    coords = np.concatenate([grid.coords, np.zeros((5, 1), np.float32)], axis=1)  # index n: no box
    current = np.append(scores.astype(np.float32), np.float32(-1))
    table = _by_class(labels)
    table[table < 0] = n
    budget = np.full(table.shape[0], n if max_keep is None else max_keep, dtype=np.int64)
    keep, kept, pairs = [], [], []
    while True:
        table_scores = current.take(table)
        alive = table_scores >= floor
        counts = np.where(budget > 0, alive.sum(axis=1), 0)
        width = int(counts.max())
        if width == 0:
            break
        if width <= table.shape[1] // 2 or not counts.all():  # drop the finished, keep index order
            live = counts > 0
            table, alive, budget = table[live], alive[live], budget[live]
            live_first = np.argsort(~alive, axis=1, kind="stable")[:, :width]
            table = np.where(np.take_along_axis(alive, live_first, 1), np.take_along_axis(table, live_first, 1), n)
            table_scores = current.take(table)
        groups, size = table.shape
        block = min(SOFT_NMS_BLOCK, size)
        by_score = _best(table_scores, min(block + 1, size))  # ties: lower index first
        rows = np.arange(groups)[:, None]
        idx = table[rows, by_score[:, :block]]
        score = current.take(idx)
        if size > block:  # the best box outside the block: every later box ranks below it
            outside = table[rows, by_score[:, block:block + 1]]
            bound = current.take(outside)
        else:
            outside, bound = np.full((groups, 1), n), np.full((groups, 1), -1, dtype=np.float32)
        near, log_factor = _block_overlaps(coords.take(idx, axis=1), sigma32)
        lower = np.maximum(bound, floor)
        open_ = np.where(score >= floor, score, np.float32(-1))  # -1: picked (or below the floor)
        pick = np.full_like(score, -1)
        while True:
            rival = np.maximum.reduce(np.where(near, open_[:, None, :], np.float32(-1)), axis=2)  # best open neighbour
            edge = np.maximum(rival, lower)
            ready = open_ >= edge
            if np.logical_or.reduce(open_ == edge, axis=None):  # ties go to the lower index, as one at a time
                ready &= (open_ > rival) | ~(near & (open_[:, None, :] == open_[:, :, None])
                                             & (idx[:, None, :] < idx[:, :, None])).any(axis=2)
                ready &= (open_ > bound) | (idx < outside)
            if not np.logical_or.reduce(ready, axis=None):
                break
            np.copyto(pick, open_, where=ready)
            log_decay = np.matmul(ready.astype(np.float32)[:, None, :], log_factor)[:, 0]
            np.copyto(open_, np.float32(-1), where=ready)
            open_ *= np.exp(log_decay, out=log_decay)
        picked = pick >= floor
        count = picked.sum(axis=1)
        if (count > budget).any():  # this step's picks all come before any later one: keep the best
            order = np.lexsort((idx, -pick), axis=-1)
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.broadcast_to(np.arange(block), order.shape), 1)
            picked &= rank < budget[:, None]
            count = picked.sum(axis=1)
        budget = budget - count
        new = idx[picked]
        keep.append(new)
        kept.append(pick[picked])
        q, j, pair_iou = _pairs(grid, runs, new)
        if pair_iou_min is not None:
            reach = np.nonzero(pair_iou >= pair_iou_min)[0]
            pairs.append((new.take(q.take(reach)), j.take(reach), pair_iou.take(reach)))
        decay = np.zeros(n + 1, dtype=np.float32)
        np.add.at(decay, j, np.multiply(pair_iou, pair_iou, out=pair_iou))
        np.divide(decay, -sigma32, out=decay)  # -(d / sigma), exactly
        current *= np.exp(decay, out=decay)
        current[new] = -1
    if not pairs:
        pairs.append((none, none, np.empty(0, dtype=np.float32)))
    if not keep:
        return none, np.empty(0, dtype=np.float32), (none, none, np.empty(0, dtype=np.float32))
    keep_a, kept_a = np.concatenate(keep), np.concatenate(kept)
    ranked = np.lexsort((keep_a, -kept_a))[:max_keep]
    src, dst, pair_iou = (np.concatenate(p) for p in zip(*pairs))
    return keep_a[ranked], kept_a[ranked], (src, dst, pair_iou)


def _best(table_scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best positions by decreasing score, ties by lower position: the first ``k``
    columns of a stable ``argsort(-table_scores)``, without sorting whole rows (a step needs only the
    block and the best box after it). A partition finds each row's k-th best score; only the positions
    at or above it, a few more than ``k`` unless many tie, are sorted."""
    groups, size = table_scores.shape
    neg = -table_scores
    if k < size and groups == 1:  # one class: the same, with one row's calls
        row = neg[0]
        cols = (row <= np.partition(row, k - 1)[k - 1]).nonzero()[0]
        if cols.size >= k:
            return cols[row[cols].argsort(kind="stable")[:k]][None]
    elif k < size:
        kth = np.partition(neg, k - 1, axis=1)[:, k - 1:k]
        rows, cols = np.nonzero(neg <= kth)  # row by row, positions ascending
        count = np.bincount(rows, minlength=groups)
        if (count >= k).all():  # (not with NaN scores: they fail every comparison)
            order = np.lexsort((cols, neg[rows, cols], rows))
            rank = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count)
            return cols[order][rank < k].reshape(groups, k)
    return np.argsort(neg, axis=1, kind="stable")[:, :k]


def _block_overlaps(c: np.ndarray, sigma: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """For (5, G, B) coordinates of each group's block: which pairs overlap (IoU > 0, a box not with
    itself) and their decay log-factors -IoU^2 / sigma, (G, B, B) each."""
    x1, y1, x2, y2, area = c
    iou = np.minimum(x2[:, :, None], x2[:, None, :])  # built in place: the same float32 operations as box_iou
    iou -= np.maximum(x1[:, :, None], x1[:, None, :])
    np.maximum(iou, 0, out=iou)
    h = np.minimum(y2[:, :, None], y2[:, None, :])
    h -= np.maximum(y1[:, :, None], y1[:, None, :])
    np.maximum(h, 0, out=h)
    iou *= h
    union = np.add(area[:, :, None], area[:, None, :])
    union -= iou
    np.maximum(union, _TINY, out=union)
    iou /= union
    diagonal = np.arange(iou.shape[1])
    iou[:, diagonal, diagonal] = 0
    near = iou > 0
    iou *= iou
    iou /= sigma
    np.negative(iou, out=iou)
    return near, np.where(near, iou, np.float32(0))  # not NaN for a box with NaN coordinates


def box_voting(kept_boxes: np.ndarray, kept_scores: np.ndarray, kept_labels: np.ndarray, boxes: np.ndarray,
               scores: np.ndarray, labels: np.ndarray, iou_thresh: float,
               num_neighbors: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The authors' box voting (``_bbox_voting`` of ``merge_proposal_layer.py``) -> (boxes, scores).

    ``kept_*`` are the suppression's survivors in pick order (highest first per class), ``boxes`` etc.
    all candidates before suppression. Candidates identical to a kept box of their class never vote.
    Going through the kept boxes in order, a kept box claims every still unclaimed same-class
    candidate with IoU >= ``iou_thresh``; the ``num_neighbors`` highest-scoring of those vote (ties: the
    lower index): the box becomes the score-weighted mean of itself and them, the score (its score +
    theirs) / (num_neighbors + 1), always divided by num_neighbors + 1. A kept box that claims nothing
    keeps its box and score. A candidate goes to the first kept box that reaches it, so "claimed before"
    needs no loop: the claimer of each candidate is the first kept box of its class over the threshold.
    Only overlapping pairs can reach a positive threshold: they come from a grid over the candidates
    (:class:`_Grid`), or, after :func:`soft_nms`, from the pairs it decayed.
    """
    if kept_boxes.shape[0] == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    return _box_voting(kept_boxes, kept_scores, _voting_pairs(kept_boxes, kept_labels, boxes, labels, iou_thresh),
                       boxes, scores, iou_thresh, num_neighbors)


def _voting_pairs(kept_boxes: np.ndarray, kept_labels: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  iou_thresh: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept, candidate, IoU) for every same-class pair that can reach ``iou_thresh``: those with IoU > 0
    through the grid, or all of them when the threshold lets IoU 0 vote."""
    if iou_thresh > 0:
        grid = _grid(boxes, labels)
        return _pairs(grid, _runs(grid, kept_boxes, kept_labels), np.arange(kept_boxes.shape[0]))
    order = np.argsort(labels, kind="stable")
    lo = np.searchsorted(labels[order], kept_labels, side="left")
    count = np.searchsorted(labels[order], kept_labels, side="right") - lo
    k = np.repeat(np.arange(kept_boxes.shape[0]), count)
    j = order[np.arange(k.size) + np.repeat(lo - (np.cumsum(count) - count), count)]
    return k, j, _pair_iou(np.take(_coords(kept_boxes), k, axis=1), np.take(_coords(boxes), j, axis=1))


def _box_voting(kept_boxes: np.ndarray, kept_scores: np.ndarray, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
                boxes: np.ndarray, scores: np.ndarray, iou_thresh: float,
                num_neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Box voting over the same-class (kept, candidate, IoU) ``pairs`` (every pair with IoU >= the
    threshold among them): :func:`box_voting` without looking at the pairs that cannot vote."""
    k, j, iou = pairs
    n_kept, n = kept_boxes.shape[0], boxes.shape[0]
    if n_kept == 0 or n == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    reach = iou >= iou_thresh  # an exact copy of a kept box has IoU 1 (or 0 when empty: then it reaches nothing)
    k, j = k[reach], j[reach]
    duplicate = np.zeros(n, dtype=bool)
    duplicate[j[(np.take(kept_boxes, k, axis=0) == np.take(boxes, j, axis=0)).all(axis=1)]] = True
    k, j = k[~duplicate[j]], j[~duplicate[j]]
    claimer = np.full(n, n_kept, dtype=np.int64)
    np.minimum.at(claimer, j, k)
    claimed = claimer[j] == k
    k, j = k[claimed], j[claimed]
    order = np.lexsort((j, -np.take(scores, j), k))  # per kept box, its candidates by score, ties by index
    k, j = k[order], j[order]
    count = np.bincount(k, minlength=n_kept)
    rank = np.arange(k.size) - np.repeat(np.cumsum(count) - count, count)
    top = np.full((n_kept, num_neighbors), -1, dtype=np.int64)
    voter = rank < num_neighbors
    top[k[voter], rank[voter]] = j[voter]
    top_scores = np.take(scores, top)
    used = (top >= 0) & (top_scores >= 0)
    weights = np.where(used, top_scores, np.float32(0)).astype(np.float32)
    weight_sum = kept_scores + weights.sum(axis=1)
    votes = (weights[:, :, None] * np.take(boxes, top, axis=0)).sum(axis=1)
    voted_boxes = (kept_scores[:, None] * kept_boxes + votes) / np.maximum(weight_sum, _TINY)[:, None]
    voted_scores = weight_sum / np.float32(num_neighbors + 1)
    has = np.asarray(used.any(axis=1))
    return (np.where(has[:, None], voted_boxes, kept_boxes).astype(np.float32),
            np.where(has, voted_scores, kept_scores).astype(np.float32))


def suppress(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, cfg: InferenceConfig) -> dict[str, np.ndarray]:
    """NMS or Soft-NMS, optional box voting, then scores >= ``final_score_thresh``, at most
    ``detections_per_img`` by score."""
    voting = cfg.box_voting_iou is not None and cfg.box_voting_neighbors > 0
    if cfg.nms == "soft_nms":
        # With voting, Soft-NMS runs until every score is under its floor: a kept box is an exact copy of
        # itself, so kept boxes never vote, and whether a candidate claimed by an early pick votes for it
        # depends on whether a late pick takes that candidate; no early stop is exact.
        voting_iou = cfg.box_voting_iou if voting else None
        pair_iou_min = voting_iou if voting_iou is not None and voting_iou > 0 else None
        keep, kept_scores, decayed = _soft_nms(boxes, scores, labels, cfg.soft_nms_sigma,
                                               None if voting else cfg.detections_per_img, SOFT_NMS_MIN_SCORE,
                                               pair_iou_min)
    else:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)
        if not voting:
            keep = keep[: cfg.detections_per_img]
        kept_scores = scores[keep]
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    if voting:
        assert cfg.box_voting_iou is not None
        if cfg.nms == "soft_nms" and cfg.box_voting_iou > 0 and keep.size:
            # Soft-NMS already paired every pick (all of them are kept) with each candidate it reaches.
            position = np.full(boxes.shape[0], -1, dtype=np.int64)
            position[keep] = np.arange(keep.size)
            src, dst, pair_iou = decayed
            pairs = (position[src], dst, pair_iou)
        else:
            pairs = _voting_pairs(kept_boxes, kept_labels, boxes, labels, cfg.box_voting_iou)
        kept_boxes, kept_scores = _box_voting(kept_boxes, kept_scores, pairs, boxes, scores, cfg.box_voting_iou,
                                              cfg.box_voting_neighbors)
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
