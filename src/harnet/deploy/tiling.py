"""Tiled prediction in numpy: the window grid of a large raster and the merge of the windows' detections.

Tiled prediction (:meth:`harnet.deploy.predictor.Predictor.predict_tiled`, whatever runs the network: a
checkpoint in PyTorch, an export under onnxruntime or OpenVINO) predicts window by window and hands the
windows' detections to :func:`merge_windows`, so the grid, the cut-box rule and the merge exist once, here,
without torch.

Why windows: the model was trained on tiles of a given size and resizes every input to its test size, so
a 2,000 px orthomosaic fed whole shrinks every crown below the anchors. A window of ``tile`` px is fed as
an image of ``tile`` px, exactly as a training tile of that size, and the model's test transform resizes it
as it would that tile. Memory is one batch of windows plus the detections, whatever the raster's size.

The grid (:func:`window_grid`): windows of ``tile`` px every ``tile * (1 - overlap)`` px; the last window of
a row or column is moved back to end at the raster's edge (never past it), so every window is a full tile
of real pixels. A raster narrower than a tile gets one window on that axis, zero-padded to the tile so the
model's scale stays the same. ``overlap`` is at most :data:`MAX_OVERLAP`: above it each pixel would be
predicted more than ``(1 / (1 - MAX_OVERLAP))**2`` times for no gain (an object no larger than the
overlap is already whole in some window).

The merge (:func:`merge_windows`), in two steps over all windows' detections:

1. **Boxes cut by a window edge.** A box touching an edge of its window that is not the raster's edge
   (within :data:`EDGE_MARGIN` px) is usually a part of an object. It is dropped only where another window
   *found* that object whole: that window holds a box of the same class, itself clear of its own window's
   interior edges, that covers at least :data:`CUT_COVER` of the cut box's area. Why found, not could have
   found (the rule before): a window overlapping the cut box would hold the object whole only if the model
   detected it there, and it may not have (its score fell below the threshold, the window's
   ``detections_per_img`` was full, the context differed); dropping on geometry alone then lost the object
   entirely, where the cut box was the only detection of it. Why coverage of the cut box and not IoU: a
   cut box is the part of the object inside its window, so it lies inside the whole box however small a
   part it is; a sliver of a large crown has a low IoU with the crown's box but is covered by it. Half of
   its area tolerates the cut box's own localisation error (a part of an object is boxed less surely) while
   a neighbouring object of the same class, which only touches or overlaps the whole box at its rim, is
   not covered by it. When every window sees an object cut (an object larger than the overlap, which no
   window holds whole), no cut box has a whole partner and all are kept: step 2 then keeps the best of
   those that overlap enough to be suppressed or voted. With ``overlap`` 0 no window overlaps another,
   nothing is dropped and the result is per-tile prediction. Dropping is preferred over down-weighting
   (SAHI's and DeepForest's choice is plain NMS over everything) because a cut box's score is often as
   high as the whole box's and would survive any suppression at a low IoU with it.
2. **Duplicates across windows.** Each window's detections already went through the model's own test
   recipe; applying that recipe again to boxes of the same window would suppress or re-score them a second
   time (Soft-NMS decays twice, voting divides twice). So the recipe is applied across windows only:
   class-aware, a box suppresses or decays boxes of *other* windows: hard NMS at ``nms_iou``, or Gaussian
   Soft-NMS with the model's sigma; with box voting, a kept box is averaged (score-weighted) with the other
   windows' boxes it claims at ``box_voting_iou``, and those are removed: they are the same object seen
   from another window, absorbed into the vote (Soft-NMS alone would only decay them, leaving low-scoring
   twins). The voted score stays the kept box's: both twins are already votes of their own window's
   candidates. Boxes with no overlapping same-class box in another window pass unchanged.

Speed: both steps need the pairs of same-class boxes of different windows that overlap. Two windows' boxes
meet only where the windows overlap, so only boxes reaching past their window's core (the part no other
window covers) take part; they are hashed into square cells about twice a typical box's size, and pairs
are formed within each cell between runs of different windows, all in numpy (:func:`cross_window_pairs`).
The greedy suppression is sequential by nature but only within a connected group of such pairs (one
object seen from two to four windows, or a chain of touching crowns along a seam): every group takes its
next pick in the same vectorised round, so the rounds number the picks of the largest group, not the boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harnet.config.model import InferenceConfig
from harnet.deploy.postprocess import SOFT_NMS_MIN_SCORE

DEFAULT_OVERLAP = 0.25
# Above this overlap every pixel would be predicted more than (1 / (1 - 0.75))**2 = 16 times.
MAX_OVERLAP = 0.75
# A box side within this many pixels of a window side touches it.
EDGE_MARGIN = 2.0
# The smallest window: one cell of the network's padding unit (transform.size_divisible, the P5 stride);
# a smaller window holds no object at the model's scale.
MIN_TILE = 32
# Candidate pairs examined at once by cross_window_pairs: bounds its memory (a few hundred bytes a pair).
PAIR_CHUNK = 1 << 20
# A cut box is dropped when a whole box of the same class in another window covers this fraction of its area.
CUT_COVER = 0.5


@dataclass(frozen=True)
class Window:
    """A pixel rectangle of a raster: column ``x``, row ``y``, ``width`` x ``height``."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Grid:
    """The windows of a raster: every combination of a column start and a row start."""

    width: int
    height: int
    tile: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def win_w(self) -> int:
        return min(self.tile, self.width)

    @property
    def win_h(self) -> int:
        return min(self.tile, self.height)

    def windows(self) -> list[Window]:
        return [Window(x, y, self.win_w, self.win_h) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.xs) * len(self.ys)


def axis_starts(size: int, tile: int, stride: int) -> tuple[int, ...]:
    """Window starts along one axis: 0, stride, ... and a last one ending at ``size``."""
    if size <= tile:
        return (0,)
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return tuple(starts)


def check_tile(tile: int, overlap: float, minimum: int = MIN_TILE) -> int:
    """The stride of windows of ``tile`` px overlapping by ``overlap``; a one-line error for values that cannot work."""
    if tile < minimum:
        raise ValueError(f"--tile {tile}: smaller than the model's minimum window of {minimum} px "
                         "(its transform.size_divisible)")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"--overlap {overlap:g}: must be at least 0 and below 1 (a fraction of the tile)")
    if overlap > MAX_OVERLAP:
        times = round(1.0 / (1.0 - overlap) ** 2)
        raise ValueError(f"--overlap {overlap:g}: at most {MAX_OVERLAP:g} (above it each pixel is predicted more "
                         f"than 16 times; {overlap:g} predicts it about {times} times)")
    stride = tile - round(tile * overlap)
    if stride < 1:
        raise ValueError(f"--overlap {overlap:g}: leaves no stride between windows of {tile} px")
    return stride


def window_grid(width: int, height: int, tile: int, overlap: float = DEFAULT_OVERLAP,
                minimum: int = MIN_TILE) -> Grid:
    """The window grid of a ``width`` x ``height`` raster (see the module docstring)."""
    stride = check_tile(tile, overlap, minimum)
    return Grid(width, height, tile, axis_starts(width, tile, stride), axis_starts(height, tile, stride))


def to_raster(boxes: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    """(n, 4) XYXY boxes in ``window``'s pixels -> float32 pixels of the ``width`` x ``height`` raster,
    clipped to the window.

    The model clips its boxes to its input, which for a window padded to the tile (a raster narrower than
    one) reaches past the raster; the merge relies on every box lying in its window."""
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) + np.asarray(
        [window.x, window.y, window.x, window.y], dtype=np.float32)
    out[:, 0::2] = np.clip(out[:, 0::2], window.x, min(window.x + window.width, width))
    out[:, 1::2] = np.clip(out[:, 1::2], window.y, min(window.y + window.height, height))
    return out


@dataclass(frozen=True)
class WindowDetections:
    """One window's detections: ``boxes`` (n, 4) float32 XYXY in raster pixels inside the window (see
    :func:`to_raster`), ``scores`` (n,) float32, ``labels`` (n,) int64."""

    window: Window
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_window(cls, window: Window, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, width: int,
                    height: int) -> WindowDetections:
        """The detections of ``window`` from boxes in its own pixels (:func:`to_raster`)."""
        return cls(window, to_raster(boxes, window, width, height), np.asarray(scores, dtype=np.float32).ravel(),
                   np.asarray(labels, dtype=np.int64).ravel())


@dataclass(frozen=True)
class MergeResult:
    """Detections of the whole raster by decreasing score, and what the merge did."""

    boxes: np.ndarray  # (n, 4) float32 XYXY raster pixels
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64
    cut_dropped: int  # boxes cut by an interior window edge whose object another window found whole
    merged: int  # duplicates across windows removed by the suppression (or absorbed by voting)


def touches_interior_edge(boxes: np.ndarray, windows: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n,) True for a box touching a side of its window (``windows`` (n, 4): x, y, width, height) that is
    not a side of the ``width`` x ``height`` raster."""
    b = boxes.astype(np.float64)
    x, y, w, h = (windows[:, k].astype(np.float64) for k in range(4))
    return (((x > 0) & (b[:, 0] <= x + EDGE_MARGIN))
            | ((x + w < width) & (b[:, 2] >= x + w - EDGE_MARGIN))
            | ((y > 0) & (b[:, 1] <= y + EDGE_MARGIN))
            | ((y + h < height) & (b[:, 3] >= y + h - EDGE_MARGIN)))


def _core(starts: tuple[int, ...], length: int, position: int) -> tuple[float, float]:
    """The span of the window at ``starts[position]`` that no other window of its row (column) covers."""
    low = starts[position - 1] + length if position > 0 else -math.inf
    high = starts[position + 1] if position + 1 < len(starts) else math.inf
    return low, high


def window_cores(windows: Sequence[Window], grid: Grid) -> np.ndarray:
    """(k, 4) float64 x0, x1, y0, y1 of the part of each window that no other window of ``grid`` covers; a box
    reaching past it may overlap a box of another window, one inside it cannot. A window whose column or
    row is not the grid's has an empty core (it may meet any window)."""
    cores_x = {x: _core(grid.xs, grid.win_w, k) for k, x in enumerate(grid.xs)}
    cores_y = {y: _core(grid.ys, grid.win_h, k) for k, y in enumerate(grid.ys)}
    nothing = (math.inf, -math.inf)
    return np.array([(*cores_x.get(w.x, nothing), *cores_y.get(w.y, nothing)) for w in windows],
                    dtype=np.float64).reshape(-1, 4)


def reaches_past(boxes: np.ndarray, cores: np.ndarray) -> np.ndarray:
    """(n,) True for a box reaching past its window's core (``cores`` (n, 4), :func:`window_cores`)."""
    b = boxes.astype(np.float64)
    return (b[:, 0] < cores[:, 0]) | (b[:, 2] > cores[:, 1]) | (b[:, 1] < cores[:, 2]) | (b[:, 3] > cores[:, 3])


def hash_cell(boxes: np.ndarray, tile: int) -> float:
    """Side of the hashing cell for :func:`cross_window_pairs`: twice the median box's longer side, so a
    typical box spans one to four cells (few entries) and a cell holds few boxes (few candidate pairs); at
    least ``tile / 32``, so that among many tiny boxes a box as large as its window spans at most 33 x 33."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.ones(1)
    return max(1.0, tile / 32, 2.0 * float(np.median(side)))


def _segment_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])`` without the loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


def cross_window_pairs(boxes: np.ndarray, labels: np.ndarray, window_ids: np.ndarray, cell: float,
                       candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, intersection area) of every pair of boxes of the same class and different windows whose
    intersection has a positive area, each pair once (i, j unordered). ``candidates``: a mask of the boxes
    that may take part (:func:`reaches_past`), all by default.

    Each box is entered in every square cell of ``cell`` px it reaches, keyed by (class, cell); entries are
    sorted by key and window, and each entry is paired with the entries of later windows of its key. A pair
    is kept in the one cell holding its intersection's top-left corner (both boxes reach that cell), so it
    is found exactly once."""
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0))
    index = np.arange(len(boxes)) if candidates is None else np.flatnonzero(candidates)
    if len(index) < 2:
        return empty
    b = boxes[index].astype(np.float64)
    lo = np.floor(b[:, :2] / cell).astype(np.int64)
    hi = np.floor(b[:, 2:] / cell).astype(np.int64)
    span = hi - lo + 1
    per_box = span[:, 0] * span[:, 1]
    owner = np.repeat(np.arange(len(index)), per_box)
    k = _segment_ranges(np.zeros(len(index), dtype=np.int64), per_box)
    cx = lo[owner, 0] + k % span[owner, 0]
    cy = lo[owner, 1] + k // span[owner, 0]
    label = labels[index].astype(np.int64) - int(labels[index].min())
    if int(label.max()) >= len(index):  # sparse class ids: number them densely so the key stays small
        label = np.unique(label, return_inverse=True)[1].ravel()
    nx, ny = int(hi[:, 0].max()) + 1, int(hi[:, 1].max()) + 1
    key = (label[owner] * ny + cy) * nx + cx
    window = window_ids[index][owner]
    order = np.lexsort((window, key))
    key, window, owner, cx, cy = key[order], window[order], owner[order], cx[order], cy[order]
    n = len(key)
    new_key = np.r_[True, key[1:] != key[:-1]]
    new_run = new_key | np.r_[True, window[1:] != window[:-1]]
    key_starts, run_starts = np.flatnonzero(new_key), np.flatnonzero(new_run)
    key_end = np.r_[key_starts[1:], n][np.cumsum(new_key) - 1]
    run_end = np.r_[run_starts[1:], n][np.cumsum(new_run) - 1]
    counts = key_end - run_end  # entries of later windows under the same key
    bx0, by0, bx1, by1 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    done = np.cumsum(counts)
    start = 0
    while start < n:  # in chunks of about PAIR_CHUNK candidate pairs, so memory stays bounded
        before = int(done[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(done, before + PAIR_CHUNK, side="right")))
        left = start + np.repeat(np.arange(end - start), counts[start:end])
        right = _segment_ranges(run_end[start:end], counts[start:end])
        a, c = owner[left], owner[right]
        x0, y0 = np.maximum(bx0[a], bx0[c]), np.maximum(by0[a], by0[c])
        iw = np.minimum(bx1[a], bx1[c]) - x0
        ih = np.minimum(by1[a], by1[c]) - y0
        here = ((iw > 0) & (ih > 0) & (np.floor(x0 / cell).astype(np.int64) == cx[left])
                & (np.floor(y0 / cell).astype(np.int64) == cy[left]))
        found.append((index[a[here]], index[c[here]], (iw * ih)[here]))
        start = end
    i, j, inter = (np.concatenate(column) for column in zip(*found))
    return i, j, inter


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label (its smallest node) of each of ``n`` nodes under the edges (i, j):
    roots hooked onto the smallest neighbouring root, then pointers jumped to their roots, until stable."""
    parent = np.arange(n)
    while True:
        pi, pj = parent[i], parent[j]
        differ = pi != pj
        if not differ.any():
            return parent
        np.minimum.at(parent, np.maximum(pi[differ], pj[differ]), np.minimum(pi[differ], pj[differ]))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def merge_across_windows(boxes: np.ndarray, scores: np.ndarray, pair_i: np.ndarray, pair_j: np.ndarray,
                         iou: np.ndarray, cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's suppression (and voting) between boxes of different windows (module docstring, step 2)
    -> (indices kept by decreasing score, their boxes float32, their scores float32).

    (pair_i, pair_j, iou): every same-class pair of boxes of different windows with a positive overlap,
    once each (:func:`cross_window_pairs`). The result is the sequential greedy's (picks by decreasing current
    score, ties to the lower index): it runs in every connected group of pairs at once."""
    n = len(scores)
    current = scores.astype(np.float64)
    out = boxes.astype(np.float64)
    has_partner = np.zeros(n, dtype=bool)
    has_partner[pair_i] = True
    has_partner[pair_j] = True
    soft = cfg.nms == "soft_nms"
    voting = cfg.box_voting_iou is not None
    if not soft:  # below both thresholds a pair does nothing under hard NMS: leave it out of the groups
        acts = iou > cfg.nms_iou
        if cfg.box_voting_iou is not None:
            acts |= iou >= cfg.box_voting_iou
        pair_i, pair_j, iou = pair_i[acts], pair_j[acts], iou[acts]
    min_score = max(cfg.final_score_thresh, SOFT_NMS_MIN_SCORE) if soft else -math.inf
    removed = np.zeros(n, dtype=bool)
    # Adjacency in CSR form, both directions.
    src, dst, weight = np.r_[pair_i, pair_j], np.r_[pair_j, pair_i], np.r_[iou, iou]
    order = np.argsort(src, kind="stable")
    dst, weight = dst[order], weight[order]
    ptr = np.r_[0, np.cumsum(np.bincount(src, minlength=n))]
    group = _components(n, pair_i, pair_j)
    live = np.unique(src)  # open nodes: neither picked nor removed
    picked = np.zeros(n, dtype=bool)
    voter_of: list[np.ndarray] = []
    voters: list[np.ndarray] = []
    while live.size:
        live = live[np.lexsort((live, -current[live], group[live]))]
        first = np.r_[True, group[live[1:]] != group[live[:-1]]]
        tops = live[first]
        if soft:
            spent = current[tops] < min_score  # the group's best is below the floor: so is the rest
            if spent.any():
                done = np.zeros(n, dtype=bool)
                done[group[tops[spent]]] = True
                removed[live[done[group[live]]]] = True
                tops = tops[~spent]
        picked[tops] = True
        counts = ptr[tops + 1] - ptr[tops]
        edges = _segment_ranges(ptr[tops], counts)
        by, target, overlap = np.repeat(tops, counts), dst[edges], weight[edges]
        is_open = ~picked[target] & ~removed[target]
        by, target, overlap = by[is_open], target[is_open], overlap[is_open]
        if cfg.box_voting_iou is not None:
            absorbed = overlap >= cfg.box_voting_iou
            removed[target[absorbed]] = True
            voter_of.append(by[absorbed])
            voters.append(target[absorbed])
            by, target, overlap = by[~absorbed], target[~absorbed], overlap[~absorbed]
        if soft:  # a target neighbours one pick per round (picks are in different groups)
            current[target] *= np.exp(-(overlap * overlap) / cfg.soft_nms_sigma)
        else:
            removed[target[overlap > cfg.nms_iou]] = True
        live = live[~picked[live] & ~removed[live]]
    if voting and voters and cfg.box_voting_neighbors > 0:
        vp, vj = np.concatenate(voter_of), np.concatenate(voters)
        original = scores.astype(np.float64)
        order = np.lexsort((-vj, -original[vj], vp))  # each pick's voters by decreasing score
        vp, vj = vp[order], vj[order]
        starts = np.flatnonzero(np.r_[True, vp[1:] != vp[:-1]])
        rank = np.arange(len(vp)) - np.repeat(starts, np.diff(np.r_[starts, len(vp)]))
        top = rank < cfg.box_voting_neighbors
        vp, vj = vp[top], vj[top]
        kept = np.unique(vp)
        numerator = current[kept, None] * out[kept]
        denominator = current[kept].copy()
        slot = np.searchsorted(kept, vp)
        np.add.at(numerator, slot, original[vj, None] * boxes[vj].astype(np.float64))
        np.add.at(denominator, slot, original[vj])
        out[kept] = numerator / np.maximum(denominator, 1e-12)[:, None]
    keep = ~removed & (~has_partner | (current >= cfg.final_score_thresh))
    index = np.flatnonzero(keep)
    index = index[np.argsort(-current[index], kind="stable")]
    return index, out[index].astype(np.float32), current[index].astype(np.float32)


def _empty_result(cut_dropped: int = 0) -> MergeResult:
    return MergeResult(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32),
                       np.zeros(0, dtype=np.int64), cut_dropped, 0)


def merge_windows(parts: Sequence[WindowDetections], grid: Grid, cfg: InferenceConfig) -> MergeResult:
    """The detections of the whole raster from its windows' (the module docstring's two steps)."""
    sizes = np.array([len(p.scores) for p in parts], dtype=np.int64)
    if sizes.sum() == 0:
        return _empty_result()
    boxes = np.concatenate([np.asarray(p.boxes, dtype=np.float32).reshape(-1, 4) for p in parts])
    scores = np.concatenate([np.asarray(p.scores, dtype=np.float32).ravel() for p in parts])
    labels = np.concatenate([np.asarray(p.labels, dtype=np.int64).ravel() for p in parts])
    window_ids = np.repeat(np.arange(len(parts)), sizes)
    rects = np.array([(p.window.x, p.window.y, p.window.width, p.window.height) for p in parts],
                     dtype=np.int64)[window_ids]
    candidates = reaches_past(boxes, window_cores([p.window for p in parts], grid)[window_ids])
    i, j, inter = cross_window_pairs(boxes, labels, window_ids, hash_cell(boxes[candidates], grid.tile), candidates)
    b = boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # Step 1: a cut box goes where a whole box of another window covers it.
    cut = touches_interior_edge(boxes, rects, grid.width, grid.height)
    dropped = np.zeros(len(boxes), dtype=bool)
    dropped[i[cut[i] & ~cut[j] & (inter >= CUT_COVER * area[i])]] = True
    dropped[j[cut[j] & ~cut[i] & (inter >= CUT_COVER * area[j])]] = True
    cut_dropped = int(dropped.sum())
    # Step 2 over the rest, with the pairs between them.
    survivors = np.flatnonzero(~dropped)
    if survivors.size == 0:
        return _empty_result(cut_dropped)
    renumber = np.cumsum(~dropped) - 1
    both = ~dropped[i] & ~dropped[j]
    i, j, inter = i[both], j[both], inter[both]
    iou = inter / (area[i] + area[j] - inter)
    index, out_boxes, out_scores = merge_across_windows(boxes[survivors], scores[survivors], renumber[i],
                                                        renumber[j], iou, cfg)
    return MergeResult(out_boxes, out_scores, labels[survivors][index], cut_dropped,
                       len(survivors) - len(index))
