"""Detections from head outputs: per-level top-k, decoding, then NMS or Gaussian Soft-NMS, and
optional box voting (the paper's test recipe, as the authors' ``merge_proposal_layer.py``).

The default path (hard NMS, no voting) is torchvision's RetinaNet post-processing step for step.

:mod:`harnet.deploy.postprocess` is a numpy copy of this module: this one, in torch, serves
training-time evaluation (``HARNet.forward``, on the GPU); that one is the torch-free runtime every
backend predicts through. Both run the same algorithm step for step, in float32, with the same helpers
under the same names; the tests hold them to each other and to a literal one-pick-at-a-time Soft-NMS.
Change both together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image, remove_small_boxes

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


def _by_class(labels: Tensor) -> Tensor:
    """Indices of the boxes as a (classes, most boxes of a class) table, -1 where empty, ascending
    within a class."""
    _, group = labels.unique(return_inverse=True)
    counts = torch.bincount(group)
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(labels.numel(), device=labels.device) - starts[sorted_group]
    table = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.int64, device=labels.device)
    table[sorted_group, position] = order
    return table


_TINY = torch.finfo(torch.float32).tiny


def _coords(boxes: Tensor) -> Tensor:
    """(n, 4) boxes -> (5, n) rows x1, y1, x2, y2, area."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)])


def _pair_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of box i of ``a`` with box i of ``b``, both (5, m) rows x1, y1, x2, y2, area -> (m,): ``box_iou``'s
    arithmetic, with 0 (not 0/0) for two empty boxes."""
    w = torch.minimum(a[2], b[2]) - torch.maximum(a[0], b[0])
    h = torch.minimum(a[3], b[3]) - torch.maximum(a[1], b[1])
    inter = w.clamp(min=0) * h.clamp(min=0)
    return inter / (a[4] + b[4] - inter).clamp(min=_TINY)


def _repeat(values: Tensor, counts: Tensor) -> Tensor:
    return torch.repeat_interleave(values, counts)


def _ramp(counts: Tensor) -> Tensor:
    """0, 1, ..., counts[0] - 1, 0, 1, ..., counts[1] - 1, ...: the position of each repeat in its run."""
    total = int(counts.sum())
    return torch.arange(total, device=counts.device) - _repeat(torch.cumsum(counts, 0) - counts, counts)


class _Grid(NamedTuple):
    """The candidates by place, to find the pairs that overlap without comparing every two boxes.

    A square grid is laid over the candidates and each is registered in every cell its box touches. Two
    overlapping boxes both touch the cell holding the top-left corner of their intersection (the larger of
    their first columns, the larger of their first rows), and a query takes each candidate from that cell
    only: outside its own first column it takes only candidates whose first column the cell is in, outside
    its own first row only those whose first row it is in. The registrations are sorted by (kind, class,
    row, column), the kind (1 if the cell is not in the box's first column) + (2 if not in its first row),
    so what a query takes from one grid row is a few contiguous runs."""

    key: Tensor  # (R,) sorted: ((kind * classes + class code) * rows + row) * cols + col
    box: Tensor  # (R,) the candidate registered
    origin: tuple[float, float]
    cell: float
    cols: int
    rows: int
    label_values: Tensor  # the distinct labels, sorted: a label's class code is its position
    coords: Tensor  # (5, n) the candidates' x1, y1, x2, y2 and area, for the IoUs
    starts: Tensor | None  # (keys + 1,) where each key's registrations start, unless there are too many keys


_DENSE_KEYS = 1 << 16  # runs are looked up in a table of every cell key up to this many keys (or 8 per registration)


def _cell_starts(key: Tensor, keys: int) -> Tensor | None:
    """Where each cell key's registrations start in the sorted ``key`` (and where the last one ends), or
    None when there are too many keys for a table (the runs are then binary searched)."""
    if keys > max(_DENSE_KEYS, 8 * key.numel()):
        return None
    return torch.cat([key.new_zeros(1), torch.cumsum(torch.bincount(key, minlength=keys), 0)])


def _cell_span(boxes: Tensor, origin: tuple[float, float], cell: float, cols: int,
               rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Each box's first and last grid column and row (clipped to one cell beyond the grid) and whether
    its coordinates are finite. The cell of a coordinate only ever grows with it and is the same function
    for candidates and queries: finding the overlaps needs nothing more of it."""
    b = boxes.double()
    finite = torch.isfinite(b).all(dim=1)
    b = torch.where(finite[:, None], b, torch.zeros_like(b))
    x = torch.floor((b[:, 0::2] - origin[0]) / cell).clamp(-1, cols).long()
    y = torch.floor((b[:, 1::2] - origin[1]) / cell).clamp(-1, rows).long()
    return x[:, 0], y[:, 0], x[:, 1], y[:, 1], finite


def _grid(boxes: Tensor, labels: Tensor) -> _Grid:
    """A :class:`_Grid` over ``boxes``, its cell about a typical box's side (a box touches a few cells)."""
    label_values, codes = labels.unique(return_inverse=True)
    b = boxes.double()
    b = b[torch.isfinite(b).all(dim=1)]
    origin, cell = (0.0, 0.0), 1.0
    if b.shape[0]:
        origin = (float(b[:, 0].min()), float(b[:, 1].min()))
        sides = torch.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]).sort().values
        median = float((sides[(sides.numel() - 1) // 2] + sides[sides.numel() // 2]) / 2)  # as numpy's median
        span = max(float(b[:, 2].max()) - origin[0], float(b[:, 3].max()) - origin[1])
        cell = max(median, float(sides[-1]) / 8, span / 1024)
        if not (math.isfinite(cell) and cell > 0):
            cell = 1.0
    c1, r1, c2, r2, finite = _cell_span(boxes, origin, cell, 1 << 30, 1 << 30)
    cols = int(c2[finite].max()) + 1 if bool(finite.any()) else 1
    rows = int(r2[finite].max()) + 1 if bool(finite.any()) else 1
    ncol = (c2 - c1 + 1).clamp(min=1)
    reps = torch.where(finite & (c2 >= c1) & (r2 >= r1), ncol * (r2 - r1 + 1), 0)
    box = _repeat(torch.arange(boxes.shape[0], device=boxes.device), reps)
    k = _ramp(reps)
    col_off, row_off = k % ncol[box], torch.div(k, ncol[box], rounding_mode="floor")
    kind = (col_off > 0).long() + 2 * (row_off > 0).long()
    key = (((kind * label_values.numel() + codes[box]) * rows + r1[box] + row_off) * cols) + c1[box] + col_off
    order = torch.argsort(key, stable=True)
    return _Grid(key[order], box[order], origin, cell, cols, rows, label_values, _coords(boxes),
                 _cell_starts(key, 4 * label_values.numel() * rows * cols))


class _Runs(NamedTuple):
    """For each query box, the runs of :class:`_Grid` registrations that hold its overlap candidates."""

    start: Tensor  # (m + 1,) query i's runs are start[i]:start[i + 1]
    lo: Tensor  # (M,) a run's first registration
    length: Tensor  # (M,) and its length
    coords: Tensor  # (5, m) the queries' x1, y1, x2, y2 and area


def _runs(grid: _Grid, query_boxes: Tensor, query_labels: Tensor) -> _Runs:
    """The runs of each query: per grid row it spans, its first column and the rest, each split by kind,
    a run kept only where that kind of cell can be the corner cell of a pair (away from the query's own
    first column a candidate must start in the column, away from its first row in the row)."""
    values = grid.label_values
    device = query_boxes.device
    code = torch.searchsorted(values, query_labels.contiguous()).clamp(max=max(values.numel() - 1, 0))
    known = values[code] == query_labels if values.numel() else torch.zeros_like(query_labels, dtype=torch.bool)
    c1, r1, c2, r2, finite = _cell_span(query_boxes, grid.origin, grid.cell, grid.cols, grid.rows)
    lo_c, hi_c = c1.clamp(min=0), c2.clamp(max=grid.cols - 1)
    lo_r, hi_r = r1.clamp(min=0), r2.clamp(max=grid.rows - 1)
    nrow = torch.where(known & finite & (hi_c >= lo_c) & (hi_r >= lo_r), hi_r - lo_r + 1, 0)
    q = _repeat(torch.arange(query_boxes.shape[0], device=device), nrow)
    row = lo_r[q] + _ramp(nrow)
    base = (code[q] * grid.rows + row) * grid.cols
    first, last = base + lo_c[q], base + hi_c[q]
    need_col = torch.stack([~(lo_c == c1)[q], torch.ones_like(q, dtype=torch.bool)], dim=1)[:, :, None]
    need_row = (row != r1[q])[:, None, None]
    kind = torch.arange(4, device=device)
    allowed = (((kind % 2 == 0) | ~need_col) & ((kind < 2) | ~need_row)).flatten()
    kinds = kind * (values.numel() * grid.rows * grid.cols)
    lows = (torch.stack([first, first + 1], dim=1)[:, :, None] + kinds).flatten()[allowed]
    highs = (torch.stack([first, last], dim=1)[:, :, None] + kinds).flatten()[allowed]
    if grid.starts is not None:
        lo, hi = grid.starts[lows], grid.starts[(highs + 1).clamp(max=grid.starts.numel() - 1)]
    else:
        lo, hi = torch.searchsorted(grid.key, lows), torch.searchsorted(grid.key, highs, right=True)
    count = hi - lo
    used = count > 0
    owner = q.repeat_interleave(8)[allowed][used]
    start = torch.cat([owner.new_zeros(1), torch.cumsum(torch.bincount(owner, minlength=query_boxes.shape[0]), 0)])
    return _Runs(start, lo[used], count[used], _coords(query_boxes))


def _pairs(grid: _Grid, runs: _Runs, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every (query, candidate) of the same class with IoU > 0, for the queries ``queries`` of ``runs``:
    (position in ``queries``, candidate, IoU), each pair once, grouped by query."""
    first = runs.start.index_select(0, queries)
    nrun = runs.start.index_select(0, queries + 1) - first
    run = _repeat(first, nrun) + _ramp(nrun)
    count = runs.length.index_select(0, run)
    q = _repeat(_repeat(torch.arange(queries.numel(), device=queries.device), nrun), count)
    j = grid.box.index_select(0, _repeat(runs.lo.index_select(0, run), count) + _ramp(count))
    iou = _pair_iou(runs.coords.index_select(1, queries.index_select(0, q)), grid.coords.index_select(1, j))
    near = iou > 0
    return q[near], j[near], iou[near]


def _lexsort(keys: list[Tensor], dim: int = -1) -> Tensor:
    """numpy's ``lexsort``: the order sorting by the last key, ties by the one before, and so on."""
    order = torch.argsort(keys[0], dim=dim, stable=True)
    for key in keys[1:]:
        order = order.gather(dim, torch.argsort(key.gather(dim, order), dim=dim, stable=True))
    return order


SOFT_NMS_BLOCK = 64  # the best remaining candidates per class examined per step of the batched Soft-NMS


def soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float,
             max_keep: int | None = None, min_score: float = SOFT_NMS_MIN_SCORE) -> tuple[Tensor, Tensor]:
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
    keep, kept, _ = _soft_nms(boxes, scores, labels, sigma, max_keep, min_score)
    return keep, kept


def _soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float, max_keep: int | None,
              min_score: float) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
    """:func:`soft_nms`, and the pairs (pick, candidate, IoU) with IoU > 0 whose decay it applied: with
    ``max_keep`` None, every kept box with every candidate it overlaps (what voting needs)."""
    n, device = boxes.shape[0], boxes.device
    none = torch.empty(0, dtype=torch.int64, device=device)
    if n == 0:
        return none, scores.new_empty(0), (none, none, boxes.new_empty(0))
    grid = _grid(boxes, labels)
    runs = _runs(grid, boxes, labels)
    # Picked boxes are marked -1 and decay by factors in [0, 1] keeps them <= 0: the floor must be above 0.
    floor = max(min_score, _TINY)
    coords = torch.cat([grid.coords, grid.coords.new_zeros(5, 1)], dim=1)  # index n: no box
    current = torch.cat([scores, scores.new_full((1,), -1.0)])
    table = _by_class(labels)
    table[table < 0] = n
    budget = torch.full((table.shape[0],), n if max_keep is None else max_keep, dtype=torch.int64, device=device)
    keep, kept, pairs = [], [], []
    while True:
        table_scores = current.take(table)
        alive = table_scores >= floor
        counts = torch.where(budget > 0, alive.sum(dim=1), 0)
        width = int(counts.max())
        if width == 0:
            break
        if width <= table.shape[1] // 2 or not bool(counts.all()):  # drop the finished, keep index order
            live = counts > 0
            table, alive, budget = table[live], alive[live], budget[live]
            live_first = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, :width]
            table = torch.where(alive.gather(1, live_first), table.gather(1, live_first), n)
            table_scores = current.take(table)
        groups, size = table.shape
        block = min(SOFT_NMS_BLOCK, size)
        by_score = torch.sort(table_scores, dim=1, descending=True, stable=True).indices  # ties: lower index
        idx = table.gather(1, by_score[:, :block])
        score = current.take(idx)
        if size > block:  # the best box outside the block: every later box ranks below it
            outside = table.gather(1, by_score[:, block:block + 1])
            bound = current.take(outside)
        else:
            outside = torch.full((groups, 1), n, device=device)
            bound = score.new_full((groups, 1), -1.0)
        near, exponent = _block_overlaps(coords.index_select(1, idx.flatten()).view(5, groups, block), sigma)
        lower = bound.clamp(min=floor)
        open_ = torch.where(score >= floor, score, -1.0)  # -1: picked (or below the floor)
        pick = torch.full_like(score, -1.0)
        while True:
            rival = torch.where(near, open_[:, None, :], -1.0).amax(dim=2)  # best open neighbour
            edge = torch.maximum(rival, lower)
            ready = open_ >= edge
            if bool((ready & (open_ == edge)).any()):  # ties go to the lower index, as one at a time
                ready &= (open_ > rival) | ~(near & (open_[:, None, :] == open_[:, :, None])
                                             & (idx[:, None, :] < idx[:, :, None])).any(dim=2)
                ready &= (open_ > bound) | (idx < outside)
            if not bool(ready.any()):
                break
            pick = torch.where(ready, open_, pick)
            decay = torch.matmul(ready[:, None, :].to(exponent.dtype), exponent)[:, 0]
            open_ = torch.where(ready, -1.0, open_) * torch.exp(-decay)
        picked = pick >= floor
        count = picked.sum(dim=1)
        if bool((count > budget).any()):  # this step's picks all come before any later one: keep the best
            order = _lexsort([idx, -pick], dim=1)
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(block, device=device).expand_as(order))
            picked &= rank < budget[:, None]
            count = picked.sum(dim=1)
        budget = budget - count
        new = idx[picked]
        keep.append(new)
        kept.append(pick[picked])
        q, j, pair_iou = _pairs(grid, runs, new)
        pairs.append((new.index_select(0, q), j, pair_iou))
        decay = current.new_zeros(n + 1).index_add_(0, j, (pair_iou * pair_iou).to(current.dtype))
        current = (current * torch.exp(-decay / sigma)).index_fill_(0, new, -1.0)
    if not keep:
        return none, scores.new_empty(0), (none, none, boxes.new_empty(0))
    keep_t, kept_t = torch.cat(keep), torch.cat(kept)
    ranked = _lexsort([keep_t, -kept_t])[:max_keep]
    src, dst, pair_iou = (torch.cat(p) for p in zip(*pairs))
    return keep_t[ranked], kept_t[ranked], (src, dst, pair_iou)


def _block_overlaps(c: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """For (5, G, B) coordinates of each group's block: which pairs overlap (IoU > 0, a box not with
    itself) and their decay exponents IoU^2 / sigma, (G, B, B) each."""
    x1, y1, x2, y2, area = c
    w = torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])
    h = torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])
    inter = w.clamp(min=0) * h.clamp(min=0)
    iou = inter / (area[:, :, None] + area[:, None, :] - inter).clamp(min=_TINY)
    diagonal = torch.arange(iou.shape[1], device=iou.device)
    iou[:, diagonal, diagonal] = 0
    near = iou > 0
    return near, torch.where(near, iou * iou / sigma, 0.0)  # not NaN for a box with NaN coordinates


def box_voting(kept_boxes: Tensor, kept_scores: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor,
               labels: Tensor, iou_thresh: float, num_neighbors: int = 4) -> tuple[Tensor, Tensor]:
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
    if kept_boxes.numel() == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    return _box_voting(kept_boxes, kept_scores, _voting_pairs(kept_boxes, kept_labels, boxes, labels, iou_thresh),
                       boxes, scores, iou_thresh, num_neighbors)


def _voting_pairs(kept_boxes: Tensor, kept_labels: Tensor, boxes: Tensor, labels: Tensor,
                  iou_thresh: float) -> tuple[Tensor, Tensor, Tensor]:
    """(kept, candidate, IoU) for every same-class pair that can reach ``iou_thresh``: those with IoU > 0
    through the grid, or all of them when the threshold lets IoU 0 vote."""
    if iou_thresh > 0:
        grid = _grid(boxes, labels)
        return _pairs(grid, _runs(grid, kept_boxes, kept_labels),
                      torch.arange(kept_boxes.shape[0], device=kept_boxes.device))
    order = torch.argsort(labels, stable=True)
    lo = torch.searchsorted(labels[order], kept_labels.contiguous())
    count = torch.searchsorted(labels[order], kept_labels.contiguous(), right=True) - lo
    k = _repeat(torch.arange(kept_boxes.shape[0], device=kept_boxes.device), count)
    j = order[_repeat(lo, count) + _ramp(count)]
    return k, j, _pair_iou(_coords(kept_boxes)[:, k], _coords(boxes)[:, j])


def _box_voting(kept_boxes: Tensor, kept_scores: Tensor, pairs: tuple[Tensor, Tensor, Tensor], boxes: Tensor,
                scores: Tensor, iou_thresh: float, num_neighbors: int) -> tuple[Tensor, Tensor]:
    """Box voting over the same-class (kept, candidate, IoU) ``pairs``, which hold every pair with IoU >=
    the threshold: :func:`box_voting` without looking at the pairs that cannot vote."""
    k, j, iou = pairs
    n_kept, n = kept_boxes.shape[0], boxes.shape[0]
    if n_kept == 0 or n == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    reach = iou >= iou_thresh  # an exact copy of a kept box has IoU 1 (or 0 when empty: then it reaches nothing)
    k, j = k[reach], j[reach]
    duplicate = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    duplicate[j[(kept_boxes.index_select(0, k) == boxes.index_select(0, j)).all(dim=1)]] = True
    k, j = k[~duplicate[j]], j[~duplicate[j]]
    # Candidate j is claimed by the first kept box that reaches it.
    claimer = torch.full((n,), n_kept, dtype=torch.int64, device=boxes.device).scatter_reduce_(0, j, k, "amin")
    claimed = claimer[j] == k
    k, j = k[claimed], j[claimed]
    order = _lexsort([j, -scores[j], k])  # per kept box, its candidates by score, ties by index
    k, j = k[order], j[order]
    rank = _ramp(torch.bincount(k, minlength=n_kept))
    top = torch.full((n_kept, num_neighbors), -1, dtype=torch.int64, device=boxes.device)
    voter = rank < num_neighbors
    top[k[voter], rank[voter]] = j[voter]
    top_scores = scores[top]
    used = (top >= 0) & (top_scores >= 0)
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
    voting = cfg.box_voting_iou is not None and cfg.box_voting_neighbors > 0
    if cfg.nms == "soft_nms":
        # Voting re-scores, so the final top-k needs every pick, not only the first detections_per_img.
        keep, kept_scores, decayed = _soft_nms(boxes, scores, labels, cfg.soft_nms_sigma,
                                               None if voting else cfg.detections_per_img, SOFT_NMS_MIN_SCORE)
    else:
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)
        if not voting:
            keep = keep[: cfg.detections_per_img]
        kept_scores = scores[keep]
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    if voting:
        assert cfg.box_voting_iou is not None
        if cfg.nms == "soft_nms" and cfg.box_voting_iou > 0 and keep.numel():
            # Soft-NMS already paired every pick (all of them are kept) with each candidate it overlaps.
            position = torch.full((boxes.shape[0],), -1, dtype=torch.int64, device=boxes.device)
            position[keep] = torch.arange(keep.numel(), device=boxes.device)
            src, dst, pair_iou = decayed
            pairs = (position[src], dst, pair_iou)
        else:
            pairs = _voting_pairs(kept_boxes, kept_labels, boxes, labels, cfg.box_voting_iou)
        kept_boxes, kept_scores = _box_voting(kept_boxes, kept_scores, pairs, boxes, scores, cfg.box_voting_iou,
                                              cfg.box_voting_neighbors)
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
