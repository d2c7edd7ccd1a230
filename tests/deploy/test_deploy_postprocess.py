"""harnet.deploy's numpy pre/post-processing. Pre-processing, anchors and candidate selection against
their torch twins (torchvision's transform, the anchor generator, ``select_candidates`` with torchvision's
BoxCoder); NMS against torchvision's; Gaussian Soft-NMS and box voting, the one suppression of harnet,
against hand-computed values and literal one-at-a-time references."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms as tv_batched_nms

from harnet.config.model import AnchorConfig, InferenceConfig, TransformConfig
from harnet.deploy import postprocess as npp
from harnet.deploy.anchors import grid_anchors, level_shapes
from harnet.deploy.preprocess import preprocess, to_input_pixels
from harnet.modeling import postprocess as tpp
from harnet.modeling.anchors import build_anchor_generator
from harnet.modeling.preprocess import preprocess as torch_preprocess
from harnet.modeling.preprocess import to_input_pixels as torch_to_input_pixels


def _candidates(seed: int, n: int = 300, classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered boxes (so suppression and voting have work), some exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 180, (12, 2))
    c = centres[rng.integers(0, 12, n)] + rng.normal(0, 4, (n, 2))
    wh = rng.uniform(10, 40, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    boxes[-5:] = boxes[:5]
    scores = rng.uniform(0.05, 1, n).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int64)
    return boxes, scores, labels


def _dense_window(seed: int, objects: int = 24, classes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates of a dense window (aerial trees): objects of 10-60 px, each touching an earlier one edge to
    edge, 20-40 jittered candidates per object with decreasing scores; their overlaps chain into one group."""
    rng = np.random.default_rng(seed)
    centres, sides = [np.zeros(2)], [rng.uniform(10, 60)]
    for _ in range(objects - 1):
        side, parent, axis = rng.uniform(10, 60), rng.integers(len(centres)), rng.integers(2)
        offset = np.zeros(2)
        offset[axis] = rng.choice([-1, 1]) * (sides[parent] + side) / 2
        offset[1 - axis] = rng.uniform(-0.5, 0.5) * min(sides[parent], side)
        centres.append(centres[parent] + offset)
        sides.append(side)
    boxes, scores, labels = [], [], []
    for centre, side in zip(centres, sides):
        n = rng.integers(20, 41)
        c = centre + rng.normal(0, 0.12 * side, (n, 2))
        s = side * np.exp(rng.normal(0, 0.15, (n, 2)))
        boxes.append(np.concatenate([c - s / 2, c + s / 2], axis=1))
        scores.append(rng.uniform(0.3, 0.95) * np.sort(rng.uniform(0.08, 1, n))[::-1] ** 1.5)
        labels.append(rng.integers(0, classes, n))
    return (np.concatenate(boxes).astype(np.float32), np.concatenate(scores).astype(np.float32),
            np.concatenate(labels).astype(np.int64))


def _one_at_a_time(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, sigma: float,
                   max_keep: int | None) -> dict[int, float]:
    """Gaussian Soft-NMS written literally, one class and one pick at a time, in float64: index -> decayed
    score, the best ``max_keep`` of all."""
    iou = np.nan_to_num(npp.box_iou(boxes.astype(np.float64), boxes.astype(np.float64)))
    out: dict[int, float] = {}
    for label in np.unique(labels):
        current = {int(i): float(scores[i]) for i in np.nonzero(labels == label)[0]}
        while current:
            best = max(current, key=lambda i: current[i])  # the first best: ties to the lower index
            if current[best] < npp.SOFT_NMS_MIN_SCORE:
                break
            out[best] = current.pop(best)
            for i in current:
                current[i] *= math.exp(-iou[best, i] ** 2 / sigma)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))[:max_keep])


# Decayed scores: float32 products of exp(-IoU^2 / sigma); an IoU is a few roundings off (2^-22), and a box still
# above the 1e-3 floor has a total exponent of at most ln(1000) ~ 7, so its score is off by ~7 * 2^-21 ~ 3.3e-6.
RTOL = 1e-5


def _assert_same_picks(keep: np.ndarray, kept: np.ndarray, expected: dict[int, float]) -> None:
    """The same boxes, scores to float32 rounding, the same order wherever scores differ by more than it."""
    assert sorted(keep.tolist()) == sorted(expected)
    np.testing.assert_allclose(kept, [expected[i] for i in keep.tolist()], rtol=RTOL, atol=1e-7)
    reference = np.array([expected[i] for i in keep.tolist()])
    assert (reference[1:] <= reference[:-1] * (1 + RTOL)).all()
    assert (np.diff(kept) <= 0).all()
    assert all(i < j for (i, a), (j, b) in itertools.pairwise(zip(keep.tolist(), kept.tolist())) if a == b)


@pytest.mark.parametrize("block", [3, 64])
@pytest.mark.parametrize(("seed", "classes", "max_keep"), [(0, 1, None), (1, 1, 25), (2, 3, None), (3, 2, 60)])
def test_soft_nms_on_a_dense_window(monkeypatch: pytest.MonkeyPatch, block: int, seed: int, classes: int,
                                    max_keep: int | None) -> None:
    """On a dense window (one group of overlapping candidates per class, where the picks of one step
    depend on each other most), the literal algorithm: the same picks in the same order, scores to
    float32 rounding."""
    monkeypatch.setattr(npp, "SOFT_NMS_BLOCK", block)
    boxes, scores, labels = _dense_window(seed, classes=classes)
    keep, kept = npp.soft_nms(boxes, scores, labels, 0.5, max_keep=max_keep)
    _assert_same_picks(keep, kept, _one_at_a_time(boxes, scores, labels, 0.5, max_keep))
    assert kept.dtype == np.float32 and len(keep) == (max_keep or len(keep)) and len(keep) > 20


def _clustered(seed: int, objects: int = 30, per_object: int = 20,
               classes: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates as a detector gives them: clusters of jittered boxes around objects, some touching."""
    rng = np.random.default_rng(seed)
    centres = np.repeat(rng.uniform(0, 200, (objects, 2)), per_object, axis=0)
    sides = np.repeat(rng.uniform(8, 38, (objects, 1)), per_object, axis=0)
    centres = centres + rng.normal(0, 1, centres.shape) * sides * 0.2
    sides = sides * (1 + 0.2 * rng.normal(0, 1, sides.shape))
    n = objects * per_object
    return (np.concatenate([centres - sides / 2, centres + sides / 2], axis=1).astype(np.float32),
            (0.05 + 0.95 * rng.uniform(0, 1, n) ** 2).astype(np.float32), rng.integers(0, classes, n).astype(np.int64))


# Class 0: A, B (IoU(A, B) = 50/150 = 1/3), C (IoU(A, C) = 80/100 = 0.8, IoU(B, C) = 30/150 = 0.2).
# Class 1: D, the same box as A, which must not be decayed by A.
BOXES = np.array([[0, 0, 10, 10], [0, 5, 10, 15], [0, 0, 10, 8], [0, 0, 10, 10]], dtype=np.float32)
SCORES = np.array([0.9, 0.8, 0.7, 0.85], dtype=np.float32)
LABELS = np.array([0, 0, 0, 1], dtype=np.int64)
SIGMA = 0.5


def test_soft_nms_matches_hand_computation() -> None:
    """Picks A, D, B, C with scores 0.9, 0.85, 0.8 e^{-(1/3)^2/s}, 0.7 e^{-0.8^2/s} e^{-0.2^2/s}."""
    iou = npp.box_iou(BOXES, BOXES)
    np.testing.assert_allclose([iou[0, 1], iou[0, 2], iou[1, 2]], [1 / 3, 0.8, 0.2], rtol=1e-6)
    keep, kept = npp.soft_nms(BOXES, SCORES, LABELS, SIGMA, max_keep=10)
    b = 0.8 * math.exp(-((1 / 3) ** 2) / SIGMA)  # decayed once, by A
    c = 0.7 * math.exp(-(0.8**2) / SIGMA) * math.exp(-(0.2**2) / SIGMA)  # by A, then by B
    assert keep.tolist() == [0, 3, 1, 2]
    np.testing.assert_allclose(kept, [0.9, 0.85, b, c], rtol=RTOL)
    assert abs(b - 0.640592) < 1e-5 and abs(c - 0.179666) < 1e-5  # the numbers by hand


def test_soft_nms_classes_do_not_interact() -> None:
    """Running all classes together = running each class alone (same picks, same decayed scores)."""
    boxes, scores, labels = _candidates(0, n=90, classes=3)
    keep, kept = npp.soft_nms(boxes, scores, labels, SIGMA, max_keep=100)
    together = dict(zip(keep.tolist(), kept.tolist()))
    alone: dict[int, float] = {}
    for k in range(3):
        idx = np.nonzero(labels == k)[0]
        keep_k, kept_k = npp.soft_nms(boxes[idx], scores[idx], labels[idx], SIGMA, max_keep=100)
        alone.update(zip(idx[keep_k].tolist(), kept_k.tolist()))
    assert together.keys() == alone.keys()
    for i in together:
        assert math.isclose(together[i], alone[i], rel_tol=1e-6)
    assert kept.tolist() == sorted(kept.tolist(), reverse=True)  # global pick order is by score


def test_soft_nms_max_keep_and_min_score() -> None:
    """At most ``max_keep`` picks (the best ones); boxes decayed below the floor are dropped."""
    keep, kept = npp.soft_nms(BOXES, SCORES, LABELS, SIGMA, max_keep=2)
    assert keep.tolist() == [0, 3] and kept.tolist() == SCORES[[0, 3]].tolist()
    same = np.array([[0, 0, 10, 10]] * 3, dtype=np.float32)
    keep, kept = npp.soft_nms(same, np.array([0.9, 0.5, 0.4], np.float32), np.zeros(3, np.int64), 0.1, 10)
    # IoU 1 with sigma 0.1 decays by e^-10 = 4.5e-5 per pick: 0.5 -> 2.3e-5 < SOFT_NMS_MIN_SCORE.
    assert keep.tolist() == [0]
    assert 0.5 * math.exp(-10) < npp.SOFT_NMS_MIN_SCORE


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize(("seed", "classes", "max_keep"), [(0, 1, None), (1, 3, None), (2, 2, 40), (3, 1, 7)])
def test_batched_soft_nms_equals_one_pick_at_a_time(monkeypatch: pytest.MonkeyPatch, block: int, seed: int,
                                                    classes: int, max_keep: int | None) -> None:
    """Several picks per step (boxes whose turn and score cannot change) = the literal algorithm: the same
    boxes, the same pick order, the same decayed scores (to float32 rounding of the decay products)."""
    monkeypatch.setattr(npp, "SOFT_NMS_BLOCK", block)
    boxes, scores, labels = _clustered(seed, classes=classes)
    keep, kept = npp.soft_nms(boxes, scores, labels, SIGMA, max_keep=max_keep)
    _assert_same_picks(keep, kept, _one_at_a_time(boxes, scores, labels, SIGMA, max_keep))


def test_soft_nms_on_one_object_and_on_one_box() -> None:
    """One object's candidates (one group, every box overlapping the best), and a single candidate."""
    boxes, scores, labels = _dense_window(4, objects=1)
    keep, kept = npp.soft_nms(boxes, scores, labels, SIGMA)
    _assert_same_picks(keep, kept, _one_at_a_time(boxes, scores, labels, SIGMA, None))
    keep, kept = npp.soft_nms(boxes[:1], scores[:1], labels[:1], SIGMA)
    assert keep.tolist() == [0] and kept.tolist() == scores[:1].tolist()


@pytest.mark.parametrize("block", [1, 64])
def test_soft_nms_ties_go_to_the_lower_index(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Equal scores: the lower index is picked first (as one at a time takes the first best), whether the
    other box overlaps it (it is then decayed) or not, inside a step's block or just outside it."""
    monkeypatch.setattr(npp, "SOFT_NMS_BLOCK", block)
    boxes = np.array([[20, 20, 30, 30], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float32)
    keep, kept = npp.soft_nms(boxes, np.full(4, 0.9, np.float32), np.zeros(4, np.int64), SIGMA)
    assert keep.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(kept, [0.9, 0.9, 0.9 * math.exp(-1 / SIGMA), 0.9 * math.exp(-1 / SIGMA)], rtol=RTOL)


@pytest.mark.parametrize("groups", [1, 3])
def test_best_of_each_row_is_the_stable_sort(groups: int) -> None:
    """A step's block: each row's k best positions by score, ties by lower position, as the first k of a
    stable argsort, with many ties (at the k-th score too), the -1 of picked boxes, and NaN."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        size = int(rng.integers(1, 40))
        scores = rng.choice(np.array([-1, 0, 0.25, 0.5, 0.75, 1], np.float32), size=(groups, size))
        if trial % 2:
            scores = np.where(rng.random((groups, size)) < 0.5, scores, rng.random((groups, size), np.float32))
        if trial % 7 == 0:
            scores[0, rng.integers(size)] = np.nan
        for k in range(1, size + 1):
            expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            assert npp._best(scores, k).tolist() == expected.tolist()


def _reference_box_voting(kept_boxes: list[list[float]], kept_scores: list[float], kept_labels: list[int],
                          boxes: list[list[float]], scores: list[float], labels: list[int],
                          thresh: float, neighbors: int = 4) -> tuple[list[list[float]], list[float]]:
    """Box voting written literally from the authors' description, one kept box at a time (plain Python).

    Per class, in kept order: the candidates identical to a kept box are never used; a kept box takes
    every unused candidate with IoU >= thresh (marking them used), the best ``neighbors`` of them by
    score vote: box = score-weighted mean of it and them, score = (its + theirs) / (neighbors + 1).
    """
    def iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0

    used = [0] * len(boxes)
    for kb, kl in zip(kept_boxes, kept_labels):
        for j, (b, lab) in enumerate(zip(boxes, labels)):
            if lab == kl and b == kb:
                used[j] = -1
    out_boxes, out_scores = [], []
    for kb, ks, kl in zip(kept_boxes, kept_scores, kept_labels):
        claimed = [j for j in range(len(boxes)) if labels[j] == kl and used[j] == 0 and iou(kb, boxes[j]) >= thresh]
        for j in claimed:
            used[j] = 1
        if not claimed:
            out_boxes.append(list(kb))
            out_scores.append(ks)
            continue
        best = sorted(claimed, key=lambda j: -scores[j])[:neighbors]
        s = [ks] + [scores[j] for j in best]
        b = [kb] + [boxes[j] for j in best]
        out_scores.append(sum(s) / (neighbors + 1))
        out_boxes.append([sum(si * bi[c] for si, bi in zip(s, b)) / sum(s) for c in range(4)])
    return out_boxes, out_scores


def test_box_voting_by_hand() -> None:
    """One kept box, one voting neighbour: box = weighted mean, score = (0.9 + 0.6) / 5."""
    candidates = np.array([
        [0, 0, 10, 10],  # itself (an exact duplicate of a kept box): never votes
        [1, 1, 11, 11],  # IoU 81/119 = 0.68 >= 0.6, score 0.6: votes
        [0, 0, 10, 20],  # IoU 0.5 < 0.6: no vote
        [1, 1, 11, 11],  # overlapping but class 1: no vote
    ], dtype=np.float32)
    scores = np.array([0.9, 0.6, 0.5, 0.8], np.float32)
    voted, voted_scores = npp.box_voting(candidates[:1], scores[:1], np.array([0]), candidates, scores,
                                         np.array([0, 0, 0, 1]), 0.6)
    np.testing.assert_allclose(voted, [[0.4, 0.4, 10.4, 10.4]], rtol=1e-6)
    np.testing.assert_allclose(voted_scores, [1.5 / 5], rtol=1e-6)


def test_box_voting_equals_the_literal_reference() -> None:
    """``_bbox_voting`` of the authors' ``merge_proposal_layer.py``: random boxes in 3 classes, ties and
    exact duplicates of kept boxes included, kept boxes from Soft-NMS (which keeps most candidates, so
    few can vote) and from hard NMS (many can); equal to 1e-6."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        xy = rng.uniform(0, 30, (120, 2))
        boxes = np.round(np.concatenate([xy, xy + 8 + rng.uniform(0, 10, (120, 2))], axis=1)).astype(np.float32)
        scores = (np.round(rng.uniform(0, 1, 120) * 10) / 10 + 0.05).astype(np.float32)  # many tied scores
        labels = rng.integers(0, 3, 120)
        boxes[60:70] = boxes[:10]  # exact duplicates
        if seed % 2:
            keep = npp.batched_nms(boxes, scores, labels, 0.5)
            kept_scores = scores[keep]
        else:
            keep, kept_scores = npp.soft_nms(boxes, scores, labels, SIGMA)
        got_boxes, got_scores = npp.box_voting(boxes[keep], kept_scores, labels[keep], boxes, scores, labels, 0.6)
        ref_boxes, ref_scores = _reference_box_voting(
            boxes[keep].tolist(), kept_scores.tolist(), labels[keep].tolist(), boxes.tolist(), scores.tolist(),
            labels.tolist(), 0.6)
        np.testing.assert_allclose(got_boxes, ref_boxes, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(got_scores, ref_scores, atol=1e-6, rtol=1e-6)
        assert (got_scores != kept_scores).any() or not seed % 2  # voting re-scored some


@pytest.mark.parametrize("iou_thresh", [0.6, 0.0])
def test_box_voting_for_other_kept_boxes(iou_thresh: float) -> None:
    """Voting with kept boxes that are not candidates (the grid queried with other boxes), and with a
    threshold of 0, where every candidate of the class can vote: the literal reference."""
    boxes, scores, labels = _candidates(5)
    kept = boxes[::7] + np.float32(1.5)
    kept_scores, kept_labels = scores[::7], labels[::7]
    got = npp.box_voting(kept, kept_scores, kept_labels, boxes, scores, labels, iou_thresh)
    ref = _reference_box_voting(kept.tolist(), kept_scores.tolist(), kept_labels.tolist(), boxes.tolist(),
                                scores.tolist(), labels.tolist(), iou_thresh)
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6)
    assert (got[1] != kept_scores).any()


def test_suppress_soft_nms_with_voting() -> None:
    """The paper's test recipe: Soft-NMS, voting (re-scoring), then score >= 0.05, at most 100, by score.

    Soft-NMS keeps every box above 1e-3, and a kept box never votes (exact duplicate of a kept box), so
    only what Soft-NMS removed can vote: here E, a near copy of A at score 0.002, decayed below 1e-3 by A.
    """
    boxes = np.concatenate([BOXES, np.array([[0, 0, 10, 9.5]], np.float32)])
    scores = np.append(SCORES, np.float32(0.002))
    labels = np.append(LABELS, 0)
    cfg = InferenceConfig(nms="soft_nms", soft_nms_sigma=SIGMA, box_voting_iou=0.6, final_score_thresh=0.05)
    out = npp.suppress(boxes, scores, labels, cfg)
    keep, kept = npp.soft_nms(boxes, scores, labels, SIGMA)
    assert 4 not in keep.tolist()
    voted, voted_scores = npp.box_voting(boxes[keep], kept, labels[keep], boxes, scores, labels, 0.6)
    order = np.argsort(-voted_scores, kind="stable")
    np.testing.assert_array_equal(out["scores"], voted_scores[order])
    np.testing.assert_array_equal(out["boxes"], voted[order])
    # A absorbs E: score (0.9 + 0.002) / 5, box their weighted mean; D (class 1) keeps box and score, ranks first.
    assert out["labels"].tolist()[0] == 1 and float(out["scores"][0]) == pytest.approx(0.85)
    a = int(np.nonzero(np.abs(out["scores"] - 0.902 / 5) < 1e-6)[0][0])
    np.testing.assert_allclose(out["boxes"][a], (0.9 * boxes[0] + 0.002 * boxes[4]) / 0.902, rtol=1e-6)
    # Scores below final_score_thresh are dropped after voting; at most detections_per_img remain.
    few = npp.suppress(boxes, scores, labels, replace(cfg, final_score_thresh=0.5, detections_per_img=1))
    assert few["scores"].tolist() == pytest.approx([0.85])


def test_suppress_authors_recipe_on_a_dense_window() -> None:
    """Soft-NMS + voting + score floor on a dense window with two classes = the literal references run
    one after the other (Soft-NMS one pick at a time, voting one kept box at a time)."""
    boxes, scores, labels = _dense_window(5, classes=2)
    recipe = InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05)
    got = npp.suppress(boxes, scores, labels, recipe)
    picks = _one_at_a_time(boxes, scores, labels, recipe.soft_nms_sigma, None)
    keep = list(picks)
    ref_boxes, ref_scores = _reference_box_voting(boxes[keep].tolist(), [picks[i] for i in keep],
                                                  labels[keep].tolist(), boxes.tolist(), scores.tolist(),
                                                  labels.tolist(), 0.6)
    order = sorted((i for i in range(len(keep)) if ref_scores[i] >= 0.05), key=lambda i: -ref_scores[i])[:100]
    assert len(got["scores"]) == len(order) == recipe.detections_per_img
    np.testing.assert_array_equal(got["labels"], labels[keep][order])
    np.testing.assert_allclose(got["scores"], np.array(ref_scores)[order], rtol=RTOL)
    np.testing.assert_allclose(got["boxes"], np.array(ref_boxes)[order], atol=1e-3)


def test_zero_area_boxes_stay_finite_through_soft_nms_and_voting() -> None:
    """Boxes clipped flat at the image border have IoU 0/0 with each other; no NaN may leak out."""
    boxes = np.array([[0, 0, 10, 10], [64, 5, 64, 20], [64, 5, 64, 20]], dtype=np.float32)
    out = npp.suppress(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.zeros(3, np.int64),
                       InferenceConfig(nms="soft_nms", box_voting_iou=0.6))
    assert len(out["scores"]) == 3
    assert np.isfinite(out["boxes"]).all() and np.isfinite(out["scores"]).all()
    np.testing.assert_array_equal(out["boxes"][1:], boxes[1:])


@pytest.mark.parametrize("table", [True, False])
def test_overlapping_pairs_through_the_grid_are_every_pair_with_positive_iou(monkeypatch: pytest.MonkeyPatch,
                                                                            table: bool) -> None:
    """The grid finds exactly the same-class pairs with IoU > 0 (with box_iou's value), each once, grouped
    by query, for the candidates themselves and for other boxes: empty boxes, boxes that only touch, a
    huge box, negative coordinates, exact copies, a box with NaN coordinates, a query of a class without
    candidates; whether a grid's runs are looked up in a table or binary searched."""
    if not table:
        monkeypatch.setattr(npp, "_cell_starts", lambda key, keys: None)
    boxes, _, labels = _candidates(4, n=400, classes=3)
    boxes -= 20
    boxes[:10] = boxes[10:20]  # copies
    boxes[20:27, 2] = boxes[20:27, 0]  # empty
    boxes[27] = [-50, -40, 500, 400]  # huge
    boxes[28] = [boxes[29, 2], boxes[29, 1], boxes[29, 2] + 5, boxes[29, 3]]  # touches box 29
    labels[28] = labels[29]
    boxes[30, 1] = np.nan
    queries = np.concatenate([boxes, boxes[:50] + 2.5]).astype(np.float32)
    query_labels = np.concatenate([labels, labels[:50]])
    query_labels[-1] = 7  # no candidate of that class
    grid = npp._grid(boxes, labels)
    assert (grid.starts is not None) == table
    q, j, iou = npp._pairs(grid, npp._runs(grid, queries, query_labels), np.arange(len(queries)))
    expected = (np.nan_to_num(npp.box_iou(queries, boxes)) > 0) & (query_labels[:, None] == labels[None, :])
    got = np.zeros_like(expected)
    got[q, j] = True
    assert (got == expected).all() and len(q) == int(expected.sum())
    np.testing.assert_array_equal(iou, npp.box_iou(queries, boxes)[q, j])
    assert not got[28, 29] and got[:, 27].any()
    assert (np.diff(q) >= 0).all()  # grouped by query


@pytest.mark.parametrize("size", [(37, 91), (128, 64), (300, 301), (64, 64)])
def test_preprocess_matches_torchvision(size: tuple[int, int]) -> None:
    cfg = TransformConfig(min_size=(96,), max_size=160, image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.3, 0.25))
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g), torch.rand(3, size[1], size[0] + 3, generator=g)]
    expected, _ = torch_preprocess(cfg, images, training=False)
    got = preprocess([im.numpy() for im in images], cfg)
    assert got.image_sizes == expected.image_sizes
    assert got.images.shape == tuple(expected.tensors.shape)
    # float32 source positions may differ in the last bit: 1e-4 on normalised pixels
    np.testing.assert_allclose(got.images, expected.tensors.numpy(), atol=1e-4, rtol=0)
    boxes = torch.tensor([[1.5, 2.0, 30.0, 40.0]])
    back = torch_to_input_pixels([{"boxes": boxes}], expected.image_sizes, [size])[0]["boxes"]
    np.testing.assert_allclose(to_input_pixels(boxes.numpy(), got.image_sizes[0], size), back.numpy(), rtol=1e-6)


def test_preprocess_of_raw_bands_with_nodata_matches_the_model() -> None:
    """4 bands of raw 16-bit values with nodata (NaN): the same batch as the model's own preprocessing, nodata
    normalised to 0 (the band's mean) in both, nothing non-finite left."""
    mean, std = (2500.0, 2400.0, 2700.0, 2600.0), (750.0, 720.0, 760.0, 730.0)
    cfg = TransformConfig(min_size=(96,), max_size=160, image_mean=mean, image_std=std)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(4, 70, 90, generator=g) * 5000, torch.rand(4, 50, 64, generator=g) * 5000]
    images[0][:, :, :20] = float("nan")
    images[1][2, 10:20, 10:20] = float("nan")
    expected, _ = torch_preprocess(cfg, images, training=False)
    got = preprocess([im.numpy() for im in images], cfg)
    assert got.images.shape == tuple(expected.tensors.shape) == (2, 4, 96, 128)
    assert np.isfinite(got.images).all()
    np.testing.assert_allclose(got.images, expected.tensors.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"image has 3 channel\(s\), the model reads 4"):
        preprocess([np.zeros((3, 8, 8), np.float32)], cfg)


@pytest.mark.parametrize("mode", ["level", "torchvision"])
def test_anchors_match_the_generator(mode: str) -> None:
    cfg = AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0), stride_mode=mode)  # type: ignore[arg-type]
    for padded in [(96, 160), (320, 320)]:
        expected = build_anchor_generator(cfg).grid(padded, level_shapes(*padded), 1)[0]
        np.testing.assert_array_equal(grid_anchors(cfg, padded), expected.numpy())


def test_candidates_match() -> None:
    """numpy ``select_candidates`` / ``decode`` = the torch twin that reduces the dense outputs on the GPU
    (torchvision's BoxCoder), on the same logits."""
    rng = np.random.default_rng(0)
    cfg = InferenceConfig(topk_candidates=50, min_box_size=2.0)
    per_level = [600, 150, 30]
    logits = [rng.normal(-2, 1.5, (n, 4)).astype(np.float32) for n in per_level]
    deltas = [rng.normal(0, 1, (n, 4)).astype(np.float32) for n in per_level]
    anchors = [np.sort(rng.uniform(0, 100, (n, 4)), axis=1)[:, [0, 1, 2, 3]].astype(np.float32) for n in per_level]
    anchors = [np.concatenate([a[:, :2], a[:, :2] + rng.uniform(4, 30, (len(a), 2))], axis=1).astype(np.float32)
               for a in anchors]
    got = npp.select_candidates(logits, deltas, anchors, (90, 110), cfg)
    exp = tpp.select_candidates([torch.from_numpy(x) for x in logits], [torch.from_numpy(x) for x in deltas],
                                [torch.from_numpy(x) for x in anchors], (90, 110), BoxCoder((1.0, 1.0, 1.0, 1.0)), cfg)
    np.testing.assert_array_equal(got[2], exp[2].numpy())
    np.testing.assert_allclose(got[1], exp[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[0], exp[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_torchvision(seed: int) -> None:
    boxes, scores, labels = _candidates(seed)
    expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    np.testing.assert_array_equal(npp.batched_nms(boxes, scores, labels, 0.5), expected.numpy())


def test_empty_inputs() -> None:
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for recipe in (InferenceConfig(), replace(InferenceConfig(), nms="soft_nms", box_voting_iou=0.6)):
        assert npp.suppress(*empty, recipe)["boxes"].shape == (0, 4)
    keep, kept = npp.soft_nms(*empty, 0.5)
    assert keep.shape == (0,) and kept.shape == (0,)
    one = (np.array([[1, 2, 10, 12]], np.float32), np.array([0.5], np.float32), np.array([3]))
    assert npp.soft_nms(*one, 0.5)[0].tolist() == [0]
    voted = npp.box_voting(one[0], one[1], one[2], *empty, 0.6)
    np.testing.assert_array_equal(voted[0], one[0])
