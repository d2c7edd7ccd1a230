"""Tiled prediction: a raster of any size predicted window by window at the model's own scale, merged at the seams.

Why windows: the model was trained on tiles of a given size and resizes every input to its test size, so
a 2,000 px orthomosaic fed whole shrinks every crown below the anchors. A window of ``tile`` px is fed as
an image of ``tile`` px, exactly as a training tile of that size, and the model's test transform resizes it
as it would that tile. Memory is one batch of windows plus the detections, whatever the raster's size.

The grid (:func:`window_grid`): windows of ``tile`` px every ``tile * (1 - overlap)`` px; the last window of
a row or column is moved back to end at the raster's edge (never past it), so every window is a full tile
of real pixels. A raster narrower than a tile gets one window on that axis, zero-padded to the tile so the
model's scale stays the same.

The merge, in two steps:

1. **Boxes cut by a window edge** (:func:`drop_cut_boxes`). A box touching an edge of its window that is
   not the raster's edge is usually a part of an object. It is dropped when another window holds the same
   box clear of that window's own interior edges: that window saw the object past the cut, so it holds the
   whole object (up to objects larger than the overlap, which no window sees whole). With ``overlap`` 0 no
   other window covers a cut box, nothing is dropped and the result is per-tile prediction. Dropping is
   preferred over down-weighting (SAHI's and DeepForest's choice is plain NMS over everything) because a
   cut box's score is often as high as the whole box's and would survive any suppression at a low IoU
   with it.
2. **Duplicates across windows** (:func:`merge_across_windows`). Each window's detections already went
   through the model's own test recipe; applying that recipe again to boxes of the same window would
   suppress or re-score them a second time (Soft-NMS decays twice, voting divides twice). So the recipe is
   applied across windows only: class-aware, a box suppresses or decays boxes of *other* windows: hard NMS
   at ``nms_iou``, or Gaussian Soft-NMS with the model's sigma; with box voting, a kept box is averaged
   (score-weighted) with the other windows' boxes it claims at ``box_voting_iou``, and those are removed:
   they are the same object seen from another window, absorbed into the vote (Soft-NMS alone would only
   decay them, leaving low-scoring twins). The voted score stays the kept box's: both twins are already
   votes of their own window's candidates.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from harnet.config.model import InferenceConfig
from harnet.data.raster import Raster, Window
from harnet.modeling.postprocess import SOFT_NMS_MIN_SCORE

DEFAULT_OVERLAP = 0.25
# A box side within this many pixels of a window side touches it.
EDGE_MARGIN = 2.0
# The smallest window: one cell of the network's padding unit (transform.size_divisible, the P5 stride);
# a smaller window holds no object at the model's scale.
MIN_TILE = 32


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
    stride = tile - round(tile * overlap)
    if stride < 1:
        raise ValueError(f"--overlap {overlap:g}: leaves no stride between windows of {tile} px")
    return stride


def window_grid(width: int, height: int, tile: int, overlap: float = DEFAULT_OVERLAP,
                minimum: int = MIN_TILE) -> Grid:
    """The window grid of a ``width`` x ``height`` raster (see the module docstring)."""
    stride = check_tile(tile, overlap, minimum)
    return Grid(width, height, tile, axis_starts(width, tile, stride), axis_starts(height, tile, stride))


def _inside(lo: np.ndarray, hi: np.ndarray, starts: np.ndarray, length: int, size: int) -> np.ndarray:
    """(n, k): interval [lo, hi] lies inside window k clear of its interior edges (raster edges need no margin)."""
    s = starts[None, :]
    low_ok = (lo[:, None] >= s + EDGE_MARGIN) | (s == 0)
    high_ok = (hi[:, None] <= s + length - EDGE_MARGIN) | (s + length >= size)
    return low_ok & high_ok


def drop_cut_boxes(boxes: Tensor, window: Window, grid: Grid) -> Tensor:
    """Mask of the boxes (raster pixels) of ``window`` to keep: False for a box touching an interior edge of
    its window that another window holds clear of its own interior edges."""
    if boxes.numel() == 0:
        return torch.ones(0, dtype=torch.bool)
    b = boxes.double().numpy()
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    touches = np.zeros(len(b), dtype=bool)
    if window.x > 0:
        touches |= x0 <= window.x + EDGE_MARGIN
    if window.x + window.width < grid.width:
        touches |= x1 >= window.x + window.width - EDGE_MARGIN
    if window.y > 0:
        touches |= y0 <= window.y + EDGE_MARGIN
    if window.y + window.height < grid.height:
        touches |= y1 >= window.y + window.height - EDGE_MARGIN
    covered = (_inside(x0, x1, np.asarray(grid.xs), grid.win_w, grid.width).any(axis=1)
               & _inside(y0, y1, np.asarray(grid.ys), grid.win_h, grid.height).any(axis=1))
    return torch.from_numpy(~(touches & covered))


def _cross_window_pairs(boxes: Tensor, labels: Tensor, window_ids: Tensor, cell: int) -> list[tuple[int, int, float]]:
    """(i, j, IoU) for every pair of same-class boxes of different windows that overlap, each pair once.

    Boxes are hashed into square cells of ``cell`` px; a pair is found in the cell holding the top-left
    corner of its intersection (both boxes reach that cell), so it is found exactly once."""
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    b = boxes.double()
    lo = torch.div(b[:, :2], cell, rounding_mode="floor").long().tolist()
    hi = torch.div(b[:, 2:], cell, rounding_mode="floor").long().tolist()
    for i, ((cx0, cy0), (cx1, cy1)) in enumerate(zip(lo, hi)):
        for cy in range(cy0, cy1 + 1):
            for cx in range(cx0, cx1 + 1):
                cells[(cx, cy)].append(i)
    pairs: list[tuple[int, int, float]] = []
    for (cx, cy), members in cells.items():
        if len(members) < 2:
            continue
        idx = torch.tensor(members)
        if window_ids[idx].unique().numel() < 2:
            continue
        sub = b[idx]
        iou = box_iou(sub, sub)
        corner = torch.maximum(sub[:, None, :2], sub[None, :, :2])
        here = (torch.div(corner, cell, rounding_mode="floor").long() == torch.tensor([cx, cy])).all(dim=2)
        ok = ((iou > 0) & here & (labels[idx][:, None] == labels[idx][None, :])
              & (window_ids[idx][:, None] != window_ids[idx][None, :]))
        ok = torch.triu(ok, diagonal=1)
        for a, c in ok.nonzero().tolist():
            pairs.append((members[a], members[c], float(iou[a, c])))
    return pairs


def merge_across_windows(boxes: Tensor, scores: Tensor, labels: Tensor, window_ids: Tensor, cfg: InferenceConfig,
                         cell: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """The model's suppression (and voting) between boxes of different windows -> (boxes, scores, labels, merged).

    Boxes with no overlapping same-class box of another window pass unchanged; ``merged`` counts the boxes
    removed. ``cell`` is the hashing cell (the tile size). Output sorted by score."""
    if boxes.numel() == 0:
        return boxes, scores, labels, 0
    neighbours: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for i, j, iou in _cross_window_pairs(boxes, labels, window_ids, cell):
        neighbours[i].append((j, iou))
        neighbours[j].append((i, iou))
    current = scores.double().tolist()
    original = list(current)
    out_boxes = boxes.double().clone()
    alive = [True] * len(current)
    soft = cfg.nms == "soft_nms"
    min_score = max(cfg.final_score_thresh, SOFT_NMS_MIN_SCORE) if soft else cfg.final_score_thresh
    picked: set[int] = set()
    heap = [(-current[i], i) for i in neighbours]
    heapq.heapify(heap)
    while heap:
        negative, i = heapq.heappop(heap)
        if i in picked or not alive[i] or -negative != current[i]:
            continue  # stale entry: decayed since it was pushed
        if soft and current[i] < min_score:
            alive[i] = False
            continue
        picked.add(i)
        voters: list[tuple[float, int]] = []
        for j, iou in neighbours[i]:
            if j in picked or not alive[j]:
                continue
            if cfg.box_voting_iou is not None and iou >= cfg.box_voting_iou:
                voters.append((original[j], j))
                alive[j] = False  # absorbed into box i's vote: the same object seen from another window
                continue
            if soft:
                current[j] *= math.exp(-(iou * iou) / cfg.soft_nms_sigma)
                heapq.heappush(heap, (-current[j], j))
            elif iou > cfg.nms_iou:
                alive[j] = False
        if voters and cfg.box_voting_neighbors > 0:
            top = sorted(voters, reverse=True)[: cfg.box_voting_neighbors]
            weights = torch.tensor([current[i]] + [w for w, _ in top], dtype=torch.float64)
            stacked = torch.stack([boxes[i].double()] + [boxes[j].double() for _, j in top])
            out_boxes[i] = (weights[:, None] * stacked).sum(0) / weights.sum().clamp(min=1e-12)
    keep = torch.tensor([alive[k] for k in range(len(current))], dtype=torch.bool)
    final_scores = torch.tensor(current, dtype=torch.float64)
    keep &= (final_scores >= cfg.final_score_thresh) | torch.tensor([k not in neighbours for k in range(len(current))])
    order = torch.argsort(final_scores[keep], descending=True, stable=True)
    idx = torch.where(keep)[0][order]
    merged = len(current) - int(keep.sum())
    return out_boxes[idx].to(boxes.dtype), final_scores[idx].to(scores.dtype), labels[idx], merged


@dataclass
class TiledResult:
    """Detections of a whole raster in its pixels, and what the merge did."""

    detections: dict[str, Tensor]  # boxes (n, 4) XYXY raster pixels, scores, labels
    windows: int
    cut_dropped: int = 0  # boxes cut by an interior window edge and seen whole by another window
    merged: int = 0  # duplicates across windows removed by the suppression
    stats: dict[str, float] = field(default_factory=dict)


def _batches(windows: Sequence[Window], size: int) -> Iterator[list[Window]]:
    for start in range(0, len(windows), size):
        yield list(windows[start : start + size])


def _padded(image: Tensor, tile: int) -> Tensor:
    """A window smaller than the tile (a raster narrower than one) zero-padded bottom/right to the tile."""
    h, w = image.shape[-2:]
    if h >= tile and w >= tile:
        return image
    out = image.new_zeros((image.shape[0], max(h, tile), max(w, tile)))
    out[:, :h, :w] = image
    return out


@torch.inference_mode()
def predict_tiled(
    model: nn.Module,
    raster: Raster,
    tile: int,
    overlap: float = DEFAULT_OVERLAP,
    *,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    predict_batch: Callable[[list[Tensor]], list[dict[str, Tensor]]] | None = None,
    progress: bool = False,
) -> TiledResult:
    """Detections of the whole ``raster`` (raster pixels, the model's output keys), window by window.

    ``predict_batch`` runs a list of window images (default: ``model`` in eval mode; test-time augmentation
    passes its own). ``progress`` shows a tqdm bar over the windows."""
    from tqdm import tqdm

    config = getattr(model, "config", None)
    minimum = max(MIN_TILE, int(config.transform.size_divisible)) if config is not None else MIN_TILE
    inference = config.inference if config is not None else InferenceConfig()
    grid = window_grid(raster.width, raster.height, tile, overlap, minimum)
    windows = grid.windows()
    was_training = model.training
    model.eval()
    run = predict_batch or (lambda images: model(images))  # type: ignore[no-any-return]
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    cut = 0
    bar = tqdm(total=len(windows), unit="window", desc=str(raster.path), disable=not progress, leave=False)
    try:
        for index, batch in enumerate(_batches(windows, batch_size)):
            images = [_padded(raster.read(w), tile).to(device) for w in batch]
            outputs = run(images)
            for k, (window, out) in enumerate(zip(batch, outputs)):
                boxes = out["boxes"].detach().cpu().float()
                boxes = boxes + torch.tensor([window.x, window.y, window.x, window.y], dtype=boxes.dtype)
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, raster.width)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, raster.height)
                keep = drop_cut_boxes(boxes, window, grid)
                cut += int((~keep).sum())
                wid = torch.full((int(keep.sum()),), index * batch_size + k, dtype=torch.int64)
                parts.append((boxes[keep], out["scores"].detach().cpu()[keep], out["labels"].detach().cpu()[keep], wid))
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    if parts:
        boxes, scores, labels, wids = (torch.cat(p) for p in zip(*parts))
    else:
        boxes, scores, labels, wids = (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                       torch.zeros(0, dtype=torch.int64))
    boxes, scores, labels, merged = merge_across_windows(boxes, scores, labels, wids, inference, cell=tile)
    return TiledResult({"boxes": boxes, "scores": scores, "labels": labels}, len(windows), cut, merged)
