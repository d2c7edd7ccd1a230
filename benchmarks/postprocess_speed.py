"""Per-image post-processing speed (issue #26): candidate selection, Gaussian Soft-NMS and box voting
(the authors' test recipe) on a synthetic dense window: ``harnet.deploy.postprocess``, the one
suppression (every backend, and training-time evaluation through ``harnet.modeling.postprocess``),
against the previous numpy and torch versions (copied below from commit bd7f3f2, before the grid and
the rounds; the torch one stays as a reference, harnet no longer has a torch suppression).

The window imitates a real aerial trees window at 400 px: ``--objects`` objects of 10-60 px, some
touching a neighbour, each with 20-40 jittered candidates of decreasing score, so that the overlaps of
the candidates chain into large groups; the candidates are encoded into head outputs over the trees
config's anchors (sizes 16-256, 6 per place, one class), smallest boxes on P3, so ``detections`` runs
the whole path from logits: per-level score threshold and top-k, decoding, Soft-NMS, voting, score
floor (the old torch rows select candidates in torch, as training-time evaluation does). The variants
run in turn (A, B, C, D, A, ...) and medians are taken, the machine being shared; the old and new
detections are checked to agree first.

    python benchmarks/postprocess_speed.py --threads 1 --out docs/results/postprocess_speed.json
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # numpy's BLAS threads are fixed when it loads
    _threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
    for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = _threads

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou as tv_box_iou

from harnet.config.model import AnchorConfig, InferenceConfig
from harnet.deploy import postprocess as npp
from harnet.deploy.anchors import anchors_per_level, grid_anchors, level_shapes
from harnet.modeling import postprocess as tpp
from harnet.tools.bench import _device_name

SIZE = 400
ANCHORS = AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0))  # the trees config's
RECIPE = InferenceConfig(nms="soft_nms", soft_nms_sigma=0.5, box_voting_iou=0.6, final_score_thresh=0.05)


def dense_window(seed: int, objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate boxes (XYXY, float32) and scores of one dense window."""
    rng = np.random.default_rng(seed)
    centres: list[np.ndarray] = []
    sides: list[np.ndarray] = []
    for k in range(objects):
        side = rng.uniform(10, 60) * rng.uniform(0.8, 1.2, 2)
        if k and rng.random() < 0.4:  # touching an earlier object
            j = int(rng.integers(k))
            angle = rng.uniform(0, 2 * np.pi)
            centre = centres[j] + (sides[j].mean() + side.mean()) / 2 * np.array([np.cos(angle), np.sin(angle)])
        else:
            centre = rng.uniform(0, SIZE, 2)
        centres.append(np.clip(centre, 0, SIZE))
        sides.append(side)
    boxes, scores = [], []
    for centre, side in zip(centres, sides):
        n = int(rng.integers(20, 41))
        c = centre + rng.normal(0, 0.12, (n, 2)) * side
        s = side * np.exp(rng.normal(0, 0.15, (n, 2)))
        boxes.append(np.concatenate([c - s / 2, c + s / 2], axis=1))
        scores.append(rng.uniform(0.3, 0.95) * np.sort(rng.uniform(0.08, 1, n))[::-1] ** 1.5)
    b = np.clip(np.concatenate(boxes), 0, SIZE).astype(np.float32)
    s = np.concatenate(scores).astype(np.float32)
    keep = (s > RECIPE.score_thresh) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    order = rng.permutation(int(keep.sum()))
    return b[keep][order], s[keep][order]


def head_outputs(boxes: np.ndarray, scores: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(A, 1) logits, (A, 4) deltas, (A, 4) anchors, anchors per level whose decoding gives back the
    candidates: the smallest boxes on P3, the next on P4, ..., at most top-k per level, each on an anchor
    of its own; every other anchor scores far below the threshold."""
    rng = np.random.default_rng(seed)
    anchors = grid_anchors(ANCHORS, (SIZE, SIZE))
    per_level = anchors_per_level(level_shapes(SIZE, SIZE), len(ANCHORS.scales) * len(ANCHORS.ratios))
    starts = np.cumsum(per_level) - per_level
    logits = np.full((len(anchors), 1), -10.0, dtype=np.float32)
    deltas = np.zeros((len(anchors), 4), dtype=np.float32)
    by_size = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    taken = 0
    for start, count in zip(starts, per_level):
        room = min(count, RECIPE.topk_candidates, len(by_size) - taken)
        chosen = by_size[taken:taken + room]
        slots = start + rng.choice(count, size=room, replace=False)
        a, b = anchors[slots], boxes[chosen]
        wa, ha = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        wb, hb = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        deltas[slots] = np.stack([((b[:, 0] + b[:, 2]) - (a[:, 0] + a[:, 2])) / 2 / wa,
                                  ((b[:, 1] + b[:, 3]) - (a[:, 1] + a[:, 3])) / 2 / ha,
                                  np.log(wb / wa), np.log(hb / ha)], axis=1)
        logits[slots, 0] = np.log(scores[chosen] / (1 - scores[chosen]))
        taken += room
    return logits, deltas, anchors, per_level


# --- The previous Soft-NMS and voting (commit bd7f3f2), numpy then torch, docstrings removed. ---

OLD_BLOCK = 64


def _np_by_class(labels: np.ndarray) -> np.ndarray:
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


def _np_pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    p, q = a[:, :, None, :], b[:, None, :, :]
    wh = np.clip(np.minimum(p[..., 2:], q[..., 2:]) - np.maximum(p[..., :2], q[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(inter / (npp.box_area(p) + npp.box_area(q) - inter), nan=0.0)




def old_np_soft_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float,
             max_keep: int | None = None, min_score: float = npp.SOFT_NMS_MIN_SCORE) -> tuple[np.ndarray, np.ndarray]:
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    table = _np_by_class(labels)
    classes, width = table.shape
    rows = np.arange(classes)[:, None]
    safe = np.clip(table, 0, None)
    table_boxes = boxes[safe]
    current = np.where(table >= 0, scores[safe], np.float32(-1)).astype(np.float32)
    budget = np.full(classes, width if max_keep is None else min(max_keep, width))
    order = np.arange(min(OLD_BLOCK, width))
    sigma32 = np.float32(sigma)
    keep, kept_scores = [], []
    while True:
        width = int((current >= min_score).sum(axis=1).max())  # below the floor never rises again
        if width == 0:
            break
        if width <= current.shape[1] // 2:
            by_score = np.argsort(-current, axis=1, kind="stable")[:, :width]
            current, table = np.take_along_axis(current, by_score, 1), np.take_along_axis(table, by_score, 1)
            table_boxes = table_boxes[rows, by_score]
        block = min(OLD_BLOCK, width)
        n = min(block + 1, current.shape[1])
        best = np.argpartition(-current, n - 1, axis=1)[:, :n] if n < current.shape[1] else \
            np.broadcast_to(np.arange(n), (classes, n))
        position = np.take_along_axis(best, np.argsort(-np.take_along_axis(current, best, 1), axis=1,
                                                       kind="stable"), 1)
        top = np.take_along_axis(current, position, 1)
        outside = top[:, block] if top.shape[1] > block else np.full(classes, -1, dtype=np.float32)
        top, position = top[:, :block], position[:, :block]
        block_boxes = table_boxes[rows, position]
        iou = _np_pairwise_iou(block_boxes, block_boxes)
        later = order[None, :block] > order[:block, None]
        log_decay = np.where(later, -(iou * iou) / sigma32, np.float32(0))
        after = top[:, None, :] * np.exp(np.cumsum(log_decay, axis=1) - log_decay)
        mine = np.diagonal(after, axis1=1, axis2=2)
        rivals = np.where(later, after, np.float32(-1)).max(axis=2)
        ok = (mine >= np.maximum(rivals, outside[:, None])) & (mine >= min_score)
        count = np.minimum(np.cumprod(ok, axis=1).sum(axis=1), budget)
        most = int(count.max())
        if most == 0:
            break
        picked = order[None, :most] < count[:, None]
        budget = budget - count
        position = position[:, :most]
        keep.append(table[rows, position][picked])
        kept_scores.append(mine[:, :most][picked])
        iou = _np_pairwise_iou(block_boxes[:, :most], table_boxes)
        decay = np.where(picked[:, :, None], iou * iou, np.float32(0)).sum(axis=1)
        current[np.broadcast_to(rows, position.shape)[picked], position[picked]] = -1.0
        current = np.where(current >= 0, current * np.exp(-decay / sigma32), current).astype(np.float32)
    if not keep:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    keep_a, kept_a = np.concatenate(keep), np.concatenate(kept_scores).astype(np.float32)
    ranked = np.argsort(-kept_a, kind="stable")[:max_keep]
    return keep_a[ranked], kept_a[ranked]


def old_np_box_voting(kept_boxes: np.ndarray, kept_scores: np.ndarray, kept_labels: np.ndarray, boxes: np.ndarray,
               scores: np.ndarray, labels: np.ndarray, iou_thresh: float,
               num_neighbors: int = 4) -> tuple[np.ndarray, np.ndarray]:
    if kept_boxes.shape[0] == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    same_class = kept_labels[:, None] == labels[None, :]
    duplicate = ((kept_boxes[:, None, :] == boxes[None, :, :]).all(axis=2) & same_class).any(axis=0)
    reach = (np.nan_to_num(npp.box_iou(kept_boxes, boxes), nan=0.0) >= iou_thresh) & same_class & ~duplicate[None, :]
    reached = reach.any(axis=0)
    claimer = reach.argmax(axis=0)
    claims = np.zeros_like(reach)
    claims[claimer[reached], np.nonzero(reached)[0]] = True
    neighbor_scores = np.where(claims, scores[None, :], np.float32(-1)).astype(np.float32)
    k = min(num_neighbors, boxes.shape[0])
    top = np.argsort(-neighbor_scores, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(neighbor_scores, top, axis=1)
    used = top_scores >= 0
    weights = np.where(used, top_scores, np.float32(0)).astype(np.float32)
    weight_sum = kept_scores + weights.sum(axis=1)
    tiny = np.finfo(np.float32).tiny
    voted_boxes = (kept_scores[:, None] * kept_boxes + (weights[:, :, None] * boxes[top]).sum(axis=1)) \
        / np.maximum(weight_sum, tiny)[:, None]
    voted_scores = weight_sum / np.float32(num_neighbors + 1)
    has = np.asarray(used.any(axis=1))
    return (np.where(has[:, None], voted_boxes, kept_boxes).astype(np.float32),
            np.where(has, voted_scores, kept_scores).astype(np.float32))



def _t_by_class(labels: Tensor) -> tuple[Tensor, Tensor]:
    _, group = labels.unique(return_inverse=True)
    counts = torch.bincount(group)
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(labels.numel(), device=labels.device) - starts[sorted_group]
    table = torch.full((counts.numel(), int(counts.max())), -1, dtype=torch.int64, device=labels.device)
    table[sorted_group, position] = order
    return table, table >= 0


def _t_pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    p, q = a[:, :, None, :], b[:, None, :, :]
    wh = (torch.minimum(p[..., 2:], q[..., 2:]) - torch.maximum(p[..., :2], q[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_q = (q[..., 2] - q[..., 0]) * (q[..., 3] - q[..., 1])
    return (inter / (area_p + area_q - inter)).nan_to_num(0.0)




def old_t_soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, sigma: float,
             max_keep: int | None = None, min_score: float = tpp.SOFT_NMS_MIN_SCORE) -> tuple[Tensor, Tensor]:
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    table, valid = _t_by_class(labels)
    classes, width = table.shape
    rows = torch.arange(classes, device=boxes.device)[:, None]
    table_boxes = boxes[table.clamp(min=0)]
    current = torch.where(valid, scores[table.clamp(min=0)], torch.full_like(table, -1, dtype=scores.dtype))
    budget = torch.full((classes,), width if max_keep is None else min(max_keep, width), device=boxes.device)
    order = torch.arange(min(OLD_BLOCK, width), device=boxes.device)
    keep, kept_scores = [], []
    while True:
        alive = current >= min_score  # a box below the floor never rises again: drop it from the table
        width = int(alive.sum(dim=1).max())
        if width == 0:
            break
        if width <= current.shape[1] // 2:
            current, by_score = current.sort(dim=1, descending=True)
            current, by_score = current[:, :width], by_score[:, :width]
            table, table_boxes = table.gather(1, by_score), table_boxes[rows, by_score]
        block = min(OLD_BLOCK, width)
        top, position = current.topk(min(block + 1, current.shape[1]), dim=1)
        outside = top[:, block] if top.shape[1] > block else torch.full_like(top[:, 0], -1.0)
        top, position = top[:, :block], position[:, :block]
        block_boxes = table_boxes[rows, position]
        iou = _t_pairwise_iou(block_boxes, block_boxes)
        later = (order[None, :block] > order[:block, None])  # [i, l]: l comes after i in the block
        log_decay = torch.where(later, -(iou * iou) / sigma, torch.zeros_like(iou))  # pick i decays a later l
        # after[g, j, l]: box l of the block once the boxes before j are picked.
        after = top[:, None, :] * torch.exp(torch.cumsum(log_decay, dim=1) - log_decay)
        mine = after.diagonal(dim1=1, dim2=2)  # (G, block): box j when its turn comes
        rivals = torch.where(later, after, torch.full_like(after, -1.0)).amax(dim=2)
        ok = (mine >= torch.maximum(rivals, outside[:, None])) & (mine >= min_score)
        count = torch.minimum(ok.to(torch.int64).cumprod(dim=1).sum(dim=1), budget)
        most = int(count.max())
        if most == 0:
            break
        picked = order[None, :most] < count[:, None]
        budget -= count
        position = position[:, :most]
        keep.append(table[rows, position][picked])
        kept_scores.append(mine[:, :most][picked])
        iou = _t_pairwise_iou(block_boxes[:, :most], table_boxes)
        decay = torch.where(picked[:, :, None], iou * iou, torch.zeros_like(iou)).sum(dim=1)
        current[rows.expand_as(position)[picked], position[picked]] = -1.0
        current = torch.where(current >= 0, current * torch.exp(-decay / sigma), current)
    if not keep:
        return torch.empty(0, dtype=torch.int64, device=boxes.device), scores.new_empty(0)
    keep_t, kept_t = torch.cat(keep), torch.cat(kept_scores)
    ranked = torch.argsort(kept_t, descending=True, stable=True)[:max_keep]
    return keep_t[ranked], kept_t[ranked]


def old_t_box_voting(kept_boxes: Tensor, kept_scores: Tensor, kept_labels: Tensor, boxes: Tensor, scores: Tensor,
               labels: Tensor, iou_thresh: float, num_neighbors: int = 4) -> tuple[Tensor, Tensor]:
    if kept_boxes.numel() == 0 or num_neighbors == 0:
        return kept_boxes, kept_scores
    same_class = kept_labels[:, None] == labels[None, :]
    duplicate = ((kept_boxes[:, None, :] == boxes[None, :, :]).all(dim=2) & same_class).any(dim=0)
    reach = (tv_box_iou(kept_boxes, boxes).nan_to_num(0.0) >= iou_thresh) & same_class & ~duplicate[None, :]
    # Candidate j is claimed by the first kept box that reaches it (argmax returns the first True).
    reached = reach.any(dim=0)
    claimer = reach.to(torch.uint8).argmax(dim=0)
    claims = torch.zeros_like(reach)
    claims[claimer[reached], torch.where(reached)[0]] = True
    neighbor_scores = torch.where(claims, scores[None, :], torch.full_like(reach, -1.0, dtype=scores.dtype))
    k = min(num_neighbors, boxes.shape[0])
    top_scores, top = neighbor_scores.topk(k, dim=1)
    used = top_scores >= 0
    weights = torch.where(used, top_scores, torch.zeros_like(top_scores))
    weight_sum = kept_scores + weights.sum(dim=1)
    voted_boxes = (kept_scores[:, None] * kept_boxes + (weights[:, :, None] * boxes[top]).sum(dim=1)) \
        / weight_sum.clamp(min=torch.finfo(weight_sum.dtype).tiny)[:, None]
    voted_scores = weight_sum / (num_neighbors + 1)
    has = used.any(dim=1)
    return torch.where(has[:, None], voted_boxes, kept_boxes), torch.where(has, voted_scores, kept_scores)



def old_np_suppress(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    cfg: InferenceConfig) -> dict[str, np.ndarray]:
    """The previous ``harnet.deploy.postprocess.suppress``, Soft-NMS + voting path."""
    assert cfg.nms == "soft_nms" and cfg.box_voting_iou is not None
    keep, kept_scores = old_np_soft_nms(boxes, scores, labels, cfg.soft_nms_sigma)
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    kept_boxes, kept_scores = old_np_box_voting(kept_boxes, kept_scores, kept_labels, boxes, scores, labels,
                                                cfg.box_voting_iou, cfg.box_voting_neighbors)
    final = np.nonzero(kept_scores >= cfg.final_score_thresh)[0]
    final = final[np.argsort(-kept_scores[final], kind="stable")][: cfg.detections_per_img]
    return {"boxes": kept_boxes[final], "scores": kept_scores[final], "labels": kept_labels[final]}


def old_t_suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: InferenceConfig) -> dict[str, Tensor]:
    """The previous ``harnet.modeling.postprocess.suppress``, Soft-NMS + voting path."""
    assert cfg.nms == "soft_nms" and cfg.box_voting_iou is not None
    keep, kept_scores = old_t_soft_nms(boxes, scores, labels, cfg.soft_nms_sigma)
    kept_boxes, kept_labels = boxes[keep], labels[keep]
    kept_boxes, kept_scores = old_t_box_voting(kept_boxes, kept_scores, kept_labels, boxes, scores, labels,
                                               cfg.box_voting_iou, cfg.box_voting_neighbors)
    final = torch.where(kept_scores >= cfg.final_score_thresh)[0]
    final = final[torch.argsort(kept_scores[final], descending=True, stable=True)][: cfg.detections_per_img]
    return {"boxes": kept_boxes[final], "scores": kept_scores[final], "labels": kept_labels[final]}


def np_detections(outputs: tuple[np.ndarray, np.ndarray, np.ndarray, list[int]], old: bool) -> dict[str, np.ndarray]:
    logits, deltas, anchors, per_level = outputs
    splits = np.cumsum(per_level)[:-1]
    candidates = npp.select_candidates(np.split(logits, splits), np.split(deltas, splits), np.split(anchors, splits),
                                       (SIZE, SIZE), RECIPE)
    return old_np_suppress(*candidates, RECIPE) if old else npp.suppress(*candidates, RECIPE)


def old_t_detections(outputs: tuple[Tensor, Tensor, Tensor, list[int]]) -> dict[str, Tensor]:
    logits, deltas, anchors, per_level = outputs
    candidates = tpp.select_candidates(list(logits.split(per_level)), list(deltas.split(per_level)),
                                       list(anchors.split(per_level)), (SIZE, SIZE), tpp.build_box_coder(), RECIPE)
    return old_t_suppress(*candidates, RECIPE)


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median and quartiles (ms) of each call, the calls run in turn so that load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for rep in range(warmup + repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4)
        out[name] = {"median_ms": round(statistics.median(values), 2), "q1_ms": round(q[0], 2),
                     "q3_ms": round(q[2], 2)}
    return out


def check_same(new: dict[str, np.ndarray], old: dict[str, np.ndarray], name: str) -> None:
    """The old and new detections agree: same labels, scores to float32 rounding of the decays, boxes to it."""
    assert np.array_equal(new["labels"], old["labels"]), name
    np.testing.assert_allclose(new["scores"], old["scores"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(new["boxes"], old["boxes"], atol=1e-3, err_msg=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="docs/results/postprocess_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    boxes, scores = dense_window(args.seed, args.objects)
    outputs = head_outputs(boxes, scores, args.seed)
    t_outputs = (*(torch.from_numpy(x) for x in outputs[:3]), outputs[3])
    candidates = npp.select_candidates(*(np.split(x, np.cumsum(outputs[3])[:-1]) for x in outputs[:3]), (SIZE, SIZE),
                                       RECIPE)
    t_candidates = tuple(torch.from_numpy(x) for x in candidates)
    keep, _ = npp.soft_nms(*candidates, RECIPE.soft_nms_sigma)

    new, old = np_detections(outputs, old=False), np_detections(outputs, old=True)
    check_same(new, old, "numpy")
    check_same(new, {k: v.numpy() for k, v in old_t_detections(t_outputs).items()}, "old torch")

    timed = interleaved({
        "numpy_detections_new": lambda: np_detections(outputs, old=False),
        "numpy_detections_old": lambda: np_detections(outputs, old=True),
        "torch_detections_old": lambda: old_t_detections(t_outputs),
        "numpy_soft_nms_new": lambda: npp.soft_nms(*candidates, RECIPE.soft_nms_sigma),
        "numpy_soft_nms_old": lambda: old_np_soft_nms(*candidates, RECIPE.soft_nms_sigma),
        "torch_soft_nms_old": lambda: old_t_soft_nms(*t_candidates, RECIPE.soft_nms_sigma),
        "numpy_select_candidates": lambda: npp.select_candidates(
            *(np.split(x, np.cumsum(outputs[3])[:-1]) for x in outputs[:3]), (SIZE, SIZE), RECIPE),
    }, args.repeats, args.warmup)
    result = {
        "window": {"size": SIZE, "objects": args.objects, "seed": args.seed, "candidates": len(candidates[0]),
                   "soft_nms_picks": len(keep), "detections": len(new["scores"])},
        "recipe": asdict(RECIPE),
        "threads": args.threads,
        "machine": {"cpu": _device_name(torch.device("cpu")), "cores": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__},
        "ms": timed,
        "speedup": {f"{what}_vs_old_{lib}": round(timed[f"{lib}_{what}_old"]["median_ms"]
                                                  / timed[f"numpy_{what}_new"]["median_ms"], 2)
                    for lib in ("numpy", "torch") for what in ("detections", "soft_nms")},
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
