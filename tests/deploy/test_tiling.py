"""harnet.deploy.tiling: the window grid, the cut-box rule and the merge across windows, in numpy.

The vectorised merge is checked against a plain sequential reference (every pair by brute force, a heap
of scores), the algorithm as it was written before it was vectorised."""

from __future__ import annotations

import heapq
import math
from dataclasses import replace

import numpy as np
import pytest

from harnet.config.model import InferenceConfig
from harnet.deploy import tiling
from harnet.deploy.postprocess import SOFT_NMS_MIN_SCORE, box_iou
from harnet.deploy.tiling import (
    CUT_COVER,
    Window,
    WindowDetections,
    axis_starts,
    check_tile,
    cross_window_pairs,
    merge_across_windows,
    merge_windows,
    to_raster,
    window_grid,
)

SOFT_VOTING = InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05)


def _part(window: Window, boxes: list[list[float]], scores: list[float], labels: list[int] | None = None
          ) -> WindowDetections:
    return WindowDetections(window, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                            np.asarray(scores, dtype=np.float32), np.asarray(labels or [0] * len(scores)))


# ---- the grid ----


def test_axis_starts_cover_the_edge_without_passing_it() -> None:
    assert axis_starts(1600, 400, 400) == (0, 400, 800, 1200)
    assert axis_starts(1000, 400, 300) == (0, 300, 600)
    assert axis_starts(1050, 400, 300) == (0, 300, 600, 650)  # last window ends at the edge
    assert axis_starts(250, 400, 300) == (0,)  # smaller than a window: one


def test_window_grid_sizes_and_small_images() -> None:
    grid = window_grid(1000, 500, 400, 0.25)
    assert grid.xs == (0, 300, 600) and grid.ys == (0, 100) and len(grid) == 6
    assert all(w.x + w.width <= 1000 and w.y + w.height <= 500 for w in grid.windows())
    assert window_grid(100, 50, 400, 0.25).windows() == [Window(0, 0, 100, 50)]


def test_bad_tile_and_overlap_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="--tile 16: smaller than the model's minimum window of 32 px"):
        window_grid(100, 100, 16)
    with pytest.raises(ValueError, match="--overlap 1: must be at least 0 and below 1"):
        window_grid(100, 100, 64, 1.0)
    with pytest.raises(ValueError, match="--overlap -0.1: must be at least 0"):
        check_tile(64, -0.1)


def test_overlap_above_three_quarters_is_refused() -> None:
    """Each pixel is predicted (1 / (1 - overlap))**2 times: above 0.75 more than 16."""
    with pytest.raises(ValueError) as info:
        check_tile(400, 0.99)
    message = str(info.value)
    assert "\n" not in message
    assert message == ("--overlap 0.99: at most 0.75 (above it each pixel is predicted more than 16 times; "
                       "0.99 predicts it about 10000 times)")
    assert check_tile(400, 0.75) == 100  # the limit itself is allowed


def test_boxes_move_to_raster_pixels_clipped_to_the_window() -> None:
    window = Window(300, 100, 400, 400)
    out = to_raster(np.array([[10.0, 20, 30, 40], [-5, 390, 420, 410]]), window, 1000, 500)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[310, 120, 330, 140], [300, 490, 700, 500]])
    # A raster narrower than the tile: the window was padded, boxes reaching into the padding are cut back.
    part = WindowDetections.from_window(Window(0, 0, 50, 40), np.array([[10.0, 5, 60, 64]]), np.array([0.5]),
                                        np.array([2]), 50, 40)
    np.testing.assert_array_equal(part.boxes, [[10, 5, 50, 40]])
    assert part.scores.dtype == np.float32 and part.labels.dtype == np.int64


# ---- step 1: boxes cut by a window edge ----

# 800 x 400 px, tile 400, overlap 0.25: windows at x 0, 300 and 400 (the last moved back to the edge).
GRID = window_grid(800, 400, 400, 0.25)
LEFT, MIDDLE, RIGHT = (Window(x, 0, 400, 400) for x in GRID.xs)
CUT = [350.0, 10, 400, 60]  # touches LEFT's right edge (x 400), an interior edge


def test_cut_box_is_dropped_when_another_window_found_the_object_whole() -> None:
    parts = [_part(LEFT, [CUT], [0.9]), _part(MIDDLE, [[350.0, 10, 430, 60]], [0.6])]
    out = merge_windows(parts, GRID, InferenceConfig())
    assert out.cut_dropped == 1 and out.merged == 0
    np.testing.assert_array_equal(out.boxes, [[350, 10, 430, 60]])
    np.testing.assert_array_equal(out.scores, np.float32([0.6]))


def test_cut_box_is_kept_when_no_other_window_found_the_object() -> None:
    """MIDDLE and RIGHT could hold the object whole, but neither detected it: the cut box is all there is."""
    parts = [_part(LEFT, [CUT, [100.0, 10, 150, 60]], [0.9, 0.8]), _part(MIDDLE, [[500.0, 200, 550, 250]], [0.7]),
             _part(RIGHT, [], [])]
    out = merge_windows(parts, GRID, InferenceConfig())
    assert out.cut_dropped == 0 and out.merged == 0
    np.testing.assert_array_equal(out.boxes, [CUT, [100, 10, 150, 60], [500, 200, 550, 250]])


def test_cut_box_is_kept_beside_a_whole_box_that_covers_too_little_of_it_or_is_of_another_class() -> None:
    cover = 20 * 50 / (50 * 50)  # the whole box covers x 380..400 of the cut box's 350..400
    assert cover < CUT_COVER
    out = merge_windows([_part(LEFT, [CUT], [0.9]), _part(MIDDLE, [[380.0, 10, 430, 60]], [0.6])], GRID,
                        InferenceConfig())
    assert out.cut_dropped == 0 and len(out.scores) == 2  # and their IoU, 0.25, is below nms_iou
    out = merge_windows([_part(LEFT, [CUT], [0.9], [0]), _part(MIDDLE, [[350.0, 10, 430, 60]], [0.6], [1])], GRID,
                        InferenceConfig())
    assert out.cut_dropped == 0 and len(out.scores) == 2


def test_an_object_cut_in_every_window_keeps_its_parts_for_the_merge() -> None:
    """An object wider than the overlap (x 260..440) is cut by LEFT at 400 and by MIDDLE at 300: no window
    holds it whole, so no part is dropped (each covers 100 / 140 of the other); the merge keeps the best of
    them (IoU 100 / 180 > nms_iou)."""
    parts = [_part(LEFT, [[260.0, 10, 400, 60]], [0.9]), _part(MIDDLE, [[300.0, 10, 440, 60]], [0.7])]
    out = merge_windows(parts, GRID, InferenceConfig())
    assert out.cut_dropped == 0 and out.merged == 1
    np.testing.assert_array_equal(out.boxes, [[260, 10, 400, 60]])


def test_the_raster_edge_cuts_nothing_and_overlap_zero_drops_nothing() -> None:
    """A box touching the raster's bottom in LEFT is whole: MIDDLE's twin merges with it, neither is dropped."""
    at_bottom = [310.0, 350, 390, 400]
    out = merge_windows([_part(LEFT, [at_bottom], [0.9]), _part(MIDDLE, [at_bottom], [0.5])], GRID,
                        InferenceConfig())
    assert out.cut_dropped == 0 and out.merged == 1
    np.testing.assert_array_equal(out.scores, np.float32([0.9]))
    no_overlap = window_grid(800, 400, 400, 0.0)
    left, right = no_overlap.windows()
    out = merge_windows([_part(left, [CUT], [0.9]), _part(right, [[400.0, 10, 450, 60]], [0.8])], no_overlap,
                        InferenceConfig())
    assert out.cut_dropped == 0 and out.merged == 0 and len(out.scores) == 2


# ---- step 2: duplicates across windows ----

WHOLE = [310.0, 10, 390, 60]  # clear of every interior edge in LEFT and in MIDDLE


def test_a_box_straddling_a_seam_is_found_once_and_same_window_boxes_are_left_alone() -> None:
    """LEFT's two twins went through the model's own suppression already: they never suppress each other;
    MIDDLE's twin is removed by every recipe (hard NMS; voting absorbs it; Soft-NMS alone decays it once
    by each LEFT box, below final_score_thresh)."""
    parts = [_part(LEFT, [WHOLE, [311.0, 11, 391, 61], [100, 100, 140, 140]], [0.9, 0.8, 0.6]),
             _part(MIDDLE, [[312.0, 10, 392, 60]], [0.7])]
    for cfg in (InferenceConfig(), SOFT_VOTING, replace(SOFT_VOTING, box_voting_iou=None)):
        out = merge_windows(parts, GRID, cfg)
        assert out.merged == 1 and out.cut_dropped == 0, cfg
        assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    # Another class: nothing merges.
    parts[1] = _part(MIDDLE, [[312.0, 10, 392, 60]], [0.7], [1])
    assert merge_windows(parts, GRID, InferenceConfig()).merged == 0


def test_voting_absorbs_twins_from_other_windows_soft_nms_alone_decays_them() -> None:
    """With box voting, a box of another window claimed by a kept box (IoU >= box_voting_iou) is averaged into it
    and removed; Soft-NMS without voting only decays it (exp(-IoU^2 / sigma))."""
    a, b = np.array([310.0, 10, 370, 60]), np.array([312.0, 10, 372, 60])
    parts = [_part(LEFT, [a.tolist()], [0.9]), _part(MIDDLE, [b.tolist()], [0.6])]
    iou = float(box_iou(a[None], b[None])[0, 0])
    out = merge_windows(parts, GRID, SOFT_VOTING)
    assert out.merged == 1 and out.scores.tolist() == pytest.approx([0.9])  # the voted score stays the kept box's
    np.testing.assert_allclose(out.boxes[0], (0.9 * a + 0.6 * b) / 1.5, rtol=0, atol=1e-4)
    soft = replace(SOFT_VOTING, box_voting_iou=None)
    out = merge_windows(parts, GRID, soft)
    assert out.merged == 0
    assert out.scores.tolist() == pytest.approx([0.9, 0.6 * math.exp(-iou * iou / soft.soft_nms_sigma)])


def test_voting_takes_the_best_neighbors_and_final_threshold_spares_boxes_without_partners() -> None:
    """Three windows see one object; voting with one neighbour averages the best other-window twin in and
    absorbs both. A lone box below final_score_thresh passed its window's recipe and is kept as it is."""
    third = Window(400, 0, 400, 400)
    boxes = [[410.0, 10, 450, 60], [412.0, 10, 452, 60], [414.0, 10, 454, 60]]
    parts = [_part(MIDDLE, [boxes[0]], [0.5]), _part(third, [boxes[1], [600, 300, 640, 340]], [0.8, 0.01]),
             _part(LEFT, [[100.0, 10, 150, 60]], [0.3]), _part(Window(300, 0, 400, 400), [boxes[2]], [0.6])]
    out = merge_windows(parts, GRID, replace(SOFT_VOTING, box_voting_neighbors=1))
    assert out.merged == 2 and out.cut_dropped == 0
    np.testing.assert_allclose(out.boxes[0], (0.8 * np.array(boxes[1]) + 0.6 * np.array(boxes[2])) / 1.4, atol=1e-4)
    assert out.scores.tolist() == pytest.approx([0.8, 0.3, 0.01])


def test_empty_inputs() -> None:
    cfg = SOFT_VOTING
    for parts in ([], [_part(LEFT, [], []), _part(MIDDLE, [], [])]):
        out = merge_windows(parts, GRID, cfg)
        assert out.boxes.shape == (0, 4) and out.scores.shape == (0,) and out.labels.shape == (0,)
        assert out.boxes.dtype == np.float32 and out.labels.dtype == np.int64
        assert (out.cut_dropped, out.merged) == (0, 0)
    one = merge_windows([_part(LEFT, [WHOLE], [0.5])], GRID, cfg)
    assert len(one.scores) == 1 and one.merged == 0
    i, j, inter = cross_window_pairs(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64), 8)
    assert i.shape == j.shape == inter.shape == (0,)
    index, boxes, scores = merge_across_windows(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                                                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), cfg)
    assert index.shape == scores.shape == (0,) and boxes.shape == (0, 4)


# ---- against the plain sequential algorithm ----


def _touches(box: np.ndarray, window: Window, width: int, height: int) -> bool:
    x0, y0, x1, y1 = (float(v) for v in box)
    m, right, bottom = 2.0, window.x + window.width, window.y + window.height
    return ((window.x > 0 and x0 <= window.x + m) or (right < width and x1 >= right - m)
            or (window.y > 0 and y0 <= window.y + m) or (bottom < height and y1 >= bottom - m))


def _reference(parts: list[WindowDetections], width: int, height: int,
               cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Both steps with every pair by brute force and a heap of scores (the torch code before issue #26,
    with the cut-box rule of now)."""
    boxes = np.concatenate([p.boxes for p in parts]).astype(np.float64)
    scores = np.concatenate([p.scores for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    wids = np.repeat(np.arange(len(parts)), [len(p.scores) for p in parts])
    cut = [_touches(b, parts[w].window, width, height) for b, w in zip(boxes, wids)]
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    wh = np.clip(np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]) - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    partner = (inter > 0) & (labels[:, None] == labels[None, :]) & (wids[:, None] != wids[None, :])
    dropped = [cut[i] and any(partner[i, j] and not cut[j] and inter[i, j] >= CUT_COVER * area[i]
                              for j in range(len(boxes))) for i in range(len(boxes))]
    keep = np.flatnonzero(~np.asarray(dropped, dtype=bool))
    boxes, scores, labels, partner, inter, area = (boxes[keep], scores[keep], labels[keep], partner[np.ix_(keep, keep)],
                                                   inter[np.ix_(keep, keep)], area[keep])
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for i, j in zip(*np.nonzero(partner)):
        neighbours.setdefault(int(i), []).append((int(j), float(inter[i, j] / (area[i] + area[j] - inter[i, j]))))
    current = [float(s) for s in scores]
    original = list(current)
    out = boxes.copy()
    alive = [True] * len(current)
    soft = cfg.nms == "soft_nms"
    min_score = max(cfg.final_score_thresh, SOFT_NMS_MIN_SCORE) if soft else cfg.final_score_thresh
    picked: set[int] = set()
    heap = [(-current[i], i) for i in neighbours]
    heapq.heapify(heap)
    while heap:
        negative, i = heapq.heappop(heap)
        if i in picked or not alive[i] or -negative != current[i]:
            continue
        if soft and current[i] < min_score:
            alive[i] = False
            continue
        picked.add(i)
        voters = []
        for j, iou in neighbours[i]:
            if j in picked or not alive[j]:
                continue
            if cfg.box_voting_iou is not None and iou >= cfg.box_voting_iou:
                voters.append((original[j], j))
                alive[j] = False
                continue
            if soft:
                current[j] *= math.exp(-(iou * iou) / cfg.soft_nms_sigma)
                heapq.heappush(heap, (-current[j], j))
            elif iou > cfg.nms_iou:
                alive[j] = False
        if voters and cfg.box_voting_neighbors > 0:
            top = sorted(voters, reverse=True)[: cfg.box_voting_neighbors]
            weights = np.array([current[i]] + [w for w, _ in top])
            stacked = np.stack([boxes[i]] + [boxes[j] for _, j in top])
            out[i] = (weights[:, None] * stacked).sum(0) / max(weights.sum(), 1e-12)
    final = np.array(current)
    kept = np.array([alive[k] and (k not in neighbours or final[k] >= cfg.final_score_thresh)
                     for k in range(len(current))], dtype=bool)
    idx = np.flatnonzero(kept)
    idx = idx[np.argsort(-final[idx], kind="stable")]
    return out[idx], final[idx], labels[idx], len(dropped) - len(keep), len(keep) - len(idx)


def _random_parts(seed: int, width: int, height: int, tile: int, overlap: float) -> list[WindowDetections]:
    """Objects of 10-50 px, two classes, each window finding most of those it overlaps (clipped, jittered,
    a random score), plus a few of its own: twins across windows, cut boxes, chains of touching boxes."""
    rng = np.random.default_rng(seed)
    grid = window_grid(width, height, tile, overlap)
    count = 60
    centre = rng.uniform(0, (width, height), (count, 2))
    half = rng.uniform(5, 25, (count, 2))
    objects = np.concatenate([centre - half, centre + half], axis=1)
    classes = rng.integers(0, 2, count)
    parts = []
    for window in grid.windows():
        seen = ((objects[:, 2] > window.x + 1) & (objects[:, 0] < window.x + window.width - 1)
                & (objects[:, 3] > window.y + 1) & (objects[:, 1] < window.y + window.height - 1)
                & (rng.random(count) < 0.85))
        own = rng.uniform(0, window.width - 30, (2, 2))
        extra = np.concatenate([own, own + rng.uniform(8, 30, (2, 2))], axis=1)
        local = np.concatenate([objects[seen] - [window.x, window.y, window.x, window.y]
                                + rng.normal(0, 1.0, (int(seen.sum()), 4)), extra])
        labels = np.concatenate([classes[seen], rng.integers(0, 2, 2)])
        part = WindowDetections.from_window(window, local, rng.uniform(0.02, 1.0, len(local)), labels, width, height)
        ok = (part.boxes[:, 2] > part.boxes[:, 0]) & (part.boxes[:, 3] > part.boxes[:, 1])
        parts.append(WindowDetections(window, part.boxes[ok], part.scores[ok], part.labels[ok]))
    return parts


@pytest.mark.parametrize("cfg", [
    InferenceConfig(),
    replace(InferenceConfig(), box_voting_iou=0.6, final_score_thresh=0.3),
    replace(InferenceConfig(), nms="soft_nms", final_score_thresh=0.05),
    replace(SOFT_VOTING, soft_nms_sigma=0.1, box_voting_neighbors=2),
    replace(SOFT_VOTING, final_score_thresh=0.4),
], ids=["nms", "nms-voting", "soft", "soft-voting", "soft-voting-high-threshold"])
@pytest.mark.parametrize(("tile", "overlap"), [(200, 0.25), (160, 0.5), (128, 0.75)])
def test_merge_matches_the_sequential_algorithm(cfg: InferenceConfig, tile: int, overlap: float) -> None:
    """The same boxes, scores (float rounding of float64 -> float32 aside), labels and order, and the same
    counts; overlaps up to 0.75 put three windows over a point on each axis, and touching objects chain
    boxes into groups larger than one object's views."""
    width, height = 600, 450
    grid = window_grid(width, height, tile, overlap)
    for seed in range(3):
        parts = _random_parts(seed, width, height, tile, overlap)
        boxes, scores, labels, cut_dropped, merged = _reference(parts, width, height, cfg)
        out = merge_windows(parts, grid, cfg)
        assert (out.cut_dropped, out.merged) == (cut_dropped, merged)
        np.testing.assert_array_equal(out.labels, labels)
        np.testing.assert_array_equal(out.scores, scores.astype(np.float32))
        np.testing.assert_allclose(out.boxes, boxes, rtol=0, atol=1e-3)


@pytest.mark.parametrize(("cell", "chunk"), [(1.0, 1 << 20), (7.0, 1), (40.0, 1000), (1000.0, 1 << 20)])
def test_cross_window_pairs_finds_every_overlapping_pair_once(cell: float, chunk: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiling, "PAIR_CHUNK", chunk)  # pairs formed a few at a time give the same pairs
    parts = _random_parts(5, 600, 450, 160, 0.5)
    boxes = np.concatenate([p.boxes for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    wids = np.repeat(np.arange(len(parts)), [len(p.scores) for p in parts])
    i, j, inter = cross_window_pairs(boxes, labels, wids, cell)
    found = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    assert len(found) == len(i)  # each once
    b = boxes.astype(np.float64)
    wh = np.clip(np.minimum(b[:, None, 2:], b[None, :, 2:]) - np.maximum(b[:, None, :2], b[None, :, :2]), 0, None)
    expected_inter = wh[..., 0] * wh[..., 1]
    ok = (expected_inter > 0) & (labels[:, None] == labels[None, :]) & (wids[:, None] != wids[None, :])
    expected = {(a, c) for a, c in zip(*np.nonzero(np.triu(ok, 1)))}
    assert found == expected and len(found) > 100
    np.testing.assert_array_equal(inter, expected_inter[i, j])
