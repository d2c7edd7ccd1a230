"""The merge of tiled prediction: the torch code before issue #26 (engine/tiling.py at bd7f3f2, copied below)
against harnet.deploy.tiling's numpy.

Synthetic detections of a 10,000 x 10,000 px raster at tile 400 / overlap 0.25 (1,156 windows): objects of
20-60 px, each window finding most of the objects it overlaps (clipped to it, jittered, scored at random)
plus a few false positives, about 60 boxes per window. Prints, for hard NMS and for Soft-NMS + box voting:

* the whole merge in ms: the old cut-box drop (per window, on geometry) + merge_across_windows, against
  deploy.tiling.merge_windows (the new cut-box rule, so the counts differ);
* the cross-window suppression alone on the same boxes (the old rule's cut boxes dropped), old against new,
  and whether their outputs agree (the same scores and labels in the same order, boxes to float rounding).

    PYTHONPATH=src python benchmarks/tiling_merge_speed.py [--size 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import heapq
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from harnet.config.model import InferenceConfig
from harnet.deploy import tiling as new
from harnet.deploy.postprocess import SOFT_NMS_MIN_SCORE
from harnet.deploy.tiling import EDGE_MARGIN, Grid, Window, WindowDetections

# ---- the old implementation (engine/tiling.py at bd7f3f2), verbatim ----


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


# ---- the benchmark ----


def synthetic(size: int, tile: int, overlap: float, per_window: int,
              seed: int = 0) -> tuple[Grid, list[WindowDetections]]:
    rng = np.random.default_rng(seed)
    grid = new.window_grid(size, size, tile, overlap)
    count = int(per_window * size * size / (tile + 40) ** 2 / 0.9)
    centre = rng.uniform(0, size, (count, 2))
    half = rng.uniform(10, 30, (count, 2))
    objects = np.concatenate([centre - half, centre + half], axis=1).clip(0, size)
    label = rng.integers(0, 2, count)
    parts = []
    for window in grid.windows():
        x0, y0, x1, y1 = window.x, window.y, window.x + window.width, window.y + window.height
        seen = ((objects[:, 2] > x0 + 3) & (objects[:, 0] < x1 - 3) & (objects[:, 3] > y0 + 3)
                & (objects[:, 1] < y1 - 3) & (rng.random(count) < 0.9))
        boxes = objects[seen] + rng.normal(0, 1.5, (int(seen.sum()), 4))
        false = rng.uniform(0, tile - 40, (3, 2)) + np.array([x0, y0])
        boxes = np.concatenate([boxes, np.concatenate([false, false + rng.uniform(15, 40, (3, 2))], axis=1)])
        labels = np.concatenate([label[seen], rng.integers(0, 2, 3)])
        boxes[:, 0::2] = boxes[:, 0::2].clip(x0, x1)
        boxes[:, 1::2] = boxes[:, 1::2].clip(y0, y1)
        ok = (boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)
        scores = rng.uniform(0.05, 1.0, int(ok.sum()))
        parts.append(WindowDetections(window, boxes[ok].astype(np.float32), scores.astype(np.float32),
                                      labels[ok].astype(np.int64)))
    return grid, parts


def old_whole(grid: Grid, parts: list[WindowDetections], cfg: InferenceConfig) -> tuple[Any, int, tuple]:
    cut, kept = 0, []
    for k, p in enumerate(parts):
        boxes = torch.from_numpy(p.boxes)
        keep = drop_cut_boxes(boxes, p.window, grid)
        cut += int((~keep).sum())
        kept.append((boxes[keep], torch.from_numpy(p.scores)[keep], torch.from_numpy(p.labels)[keep],
                     torch.full((int(keep.sum()),), k, dtype=torch.int64)))
    inputs = tuple(torch.cat(t) for t in zip(*kept))
    return merge_across_windows(*inputs, cfg, cell=grid.tile), cut, inputs


def new_suppression(grid: Grid, parts: list[WindowDetections], boxes: np.ndarray, scores: np.ndarray,
                    labels: np.ndarray, wids: np.ndarray,
                    cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Step 2 alone, on the inputs of the old merge_across_windows."""
    candidates = new.reaches_past(boxes, new.window_cores([p.window for p in parts], grid)[wids])
    i, j, inter = new.cross_window_pairs(boxes, labels, wids, new.hash_cell(boxes[candidates], grid.tile), candidates)
    b = boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    index, out_boxes, out_scores = new.merge_across_windows(boxes, scores, i, j,
                                                            inter / (area[i] + area[j] - inter), cfg)
    return out_boxes, out_scores, labels[index], len(scores) - len(index)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return (time.perf_counter() - start) * 1000, out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--tile", type=int, default=400)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--per-window", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved; the best is shown")
    args = parser.parse_args()
    torch.set_num_threads(1)
    grid, parts = synthetic(args.size, args.tile, args.overlap, args.per_window)
    n = sum(len(p.scores) for p in parts)
    print(f"{len(parts)} windows, {n} boxes ({n / len(parts):.0f} per window), raster {args.size} px, "
          f"tile {args.tile}, overlap {args.overlap}")
    base = InferenceConfig()
    configs = {"nms": base,
               "soft_nms + voting": replace(base, nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05)}
    for name, cfg in configs.items():
        old_times, new_times = [], []
        for _ in range(args.repeat):
            ms, (old_out, old_cut, inputs) = timed(lambda cfg=cfg: old_whole(grid, parts, cfg))
            old_times.append(ms)
            ms, result = timed(lambda cfg=cfg: new.merge_windows(parts, grid, cfg))
            new_times.append(ms)
        print(f"[{name}] whole merge: old {min(old_times):.0f} ms (cut {old_cut}, merged {old_out[3]}, "
              f"out {len(old_out[1])}) | new {min(new_times):.0f} ms (cut {result.cut_dropped}, "
              f"merged {result.merged}, out {len(result.scores)}) | {min(old_times) / min(new_times):.1f}x")
        boxes, scores, labels, wids = (t.numpy() for t in inputs)
        old_steps, new_steps = [], []
        for _ in range(args.repeat):
            ms, reference = timed(lambda cfg=cfg, inputs=inputs: merge_across_windows(*inputs, cfg, cell=grid.tile))
            old_steps.append(ms)
            ms, got = timed(lambda cfg=cfg, arrays=(boxes, scores, labels, wids): new_suppression(grid, parts, *arrays,
                                                                                                   cfg))
            new_steps.append(ms)
        same = (len(got[1]) == len(reference[1]) and np.array_equal(got[2], reference[2].numpy())
                and np.array_equal(got[1], reference[1].numpy()))
        gap = float(np.abs(got[0] - reference[0].numpy()).max()) if same and len(got[0]) else float("nan")
        print(f"[{name}] suppression alone: old {min(old_steps):.0f} ms | new {min(new_steps):.0f} ms | "
              f"{min(old_steps) / min(new_steps):.1f}x | same scores, labels and order: {same} "
              f"(merged {reference[3]} / {got[3]}), max box difference {gap:.2g} px")


if __name__ == "__main__":
    main()
