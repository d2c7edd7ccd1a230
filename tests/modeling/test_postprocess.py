"""Post-processing: Gaussian Soft-NMS and box voting against hand-computed values; NMS = torchvision's."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, box_iou

from harnet.config.model import InferenceConfig
from harnet.modeling.postprocess import SOFT_NMS_MIN_SCORE, box_voting, select_candidates, soft_nms, suppress

SIGMA = 0.5


def random_detections(
    n: int, seed: int, extent: float, min_side: float, spread: float, num_labels: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random candidates: boxes with sides in [min_side, min_side + spread), scores, labels."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * extent
    boxes = torch.cat([xy, xy + min_side + torch.rand(n, 2, generator=g) * spread], dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, num_labels, (n,), generator=g)
# Class 0: A, B (IoU(A, B) = 50/150 = 1/3), C (IoU(A, C) = 80/100 = 0.8, IoU(B, C) = 30/150 = 0.2).
# Class 1: D, the same box as A, which must not be decayed by A.
BOXES = torch.tensor(
    [[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0], [0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 10.0]]
)
SCORES = torch.tensor([0.9, 0.8, 0.7, 0.85])
LABELS = torch.tensor([0, 0, 0, 1])


def test_soft_nms_matches_hand_computation() -> None:
    """Picks A, D, B, C with scores 0.9, 0.85, 0.8 e^{-(1/3)^2/s}, 0.7 e^{-0.8^2/s} e^{-0.2^2/s}."""
    iou = box_iou(BOXES, BOXES)
    torch.testing.assert_close(iou[0, 1], torch.tensor(1 / 3))
    torch.testing.assert_close(iou[0, 2], torch.tensor(0.8))
    torch.testing.assert_close(iou[1, 2], torch.tensor(0.2))
    keep, scores = soft_nms(BOXES, SCORES, LABELS, SIGMA, max_keep=10)
    b = 0.8 * math.exp(-((1 / 3) ** 2) / SIGMA)  # decayed once, by A
    c = 0.7 * math.exp(-(0.8**2) / SIGMA) * math.exp(-(0.2**2) / SIGMA)  # by A, then by B
    assert keep.tolist() == [0, 3, 1, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.85, b, c]))
    assert abs(b - 0.640592) < 1e-5 and abs(c - 0.179666) < 1e-5  # the numbers by hand


def test_soft_nms_classes_do_not_interact() -> None:
    """Running all classes together = running each class alone (same picks, same decayed scores)."""
    boxes, scores, labels = random_detections(30, seed=0, extent=40, min_side=5, spread=20, num_labels=3)
    keep, kept = soft_nms(boxes, scores, labels, SIGMA, max_keep=100)
    together = dict(zip(keep.tolist(), kept.tolist()))
    alone: dict[int, float] = {}
    for k in range(3):
        idx = torch.where(labels == k)[0]
        keep_k, kept_k = soft_nms(boxes[idx], scores[idx], labels[idx], SIGMA, max_keep=100)
        alone.update(zip(idx[keep_k].tolist(), kept_k.tolist()))
    assert together.keys() == alone.keys()
    for i in together:
        assert math.isclose(together[i], alone[i], rel_tol=1e-6)
    assert kept.tolist() == sorted(kept.tolist(), reverse=True)  # global pick order is by score


def test_soft_nms_max_keep_and_min_score() -> None:
    """At most ``max_keep`` picks (the best ones); boxes decayed below the floor are dropped."""
    keep, scores = soft_nms(BOXES, SCORES, LABELS, SIGMA, max_keep=2)
    assert keep.tolist() == [0, 3] and scores.tolist() == SCORES[[0, 3]].tolist()
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    keep, scores = soft_nms(same, torch.tensor([0.9, 0.5, 0.4]), torch.zeros(3, dtype=torch.int64), 0.1, 10)
    # IoU 1 with sigma 0.1 decays by e^-10 = 4.5e-5 per pick: 0.5 -> 2.3e-5 < SOFT_NMS_MIN_SCORE.
    assert keep.tolist() == [0]
    assert 0.5 * math.exp(-10) < SOFT_NMS_MIN_SCORE
    empty_keep, empty_scores = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                                        SIGMA, 10)
    assert empty_keep.numel() == 0 and empty_scores.numel() == 0


def reference_soft_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float,
                       max_keep: int | None) -> dict[int, float]:
    """Gaussian Soft-NMS written literally, one class and one pick at a time (float64): index -> decayed score."""
    out: dict[int, float] = {}
    for label in labels.unique().tolist():
        idx = torch.where(labels == label)[0]
        current = {int(i): float(scores[i]) for i in idx}
        picks = 0
        while current and (max_keep is None or picks < max_keep):
            best = max(current, key=lambda i: current[i])
            if current[best] < SOFT_NMS_MIN_SCORE:
                break
            out[best] = current.pop(best)
            picks += 1
            iou = box_iou(boxes[best][None].double(), boxes.double())[0]
            for i in current:
                current[i] *= math.exp(-float(iou[i]) ** 2 / sigma)
    return out


def clustered_candidates(seed: int, objects: int = 30, per_object: int = 20,
                         num_labels: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates as a detector gives them: clusters of jittered boxes around objects, some touching."""
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(objects, 2, generator=g) * 200).repeat_interleave(per_object, 0)
    sides = (8 + torch.rand(objects, 1, generator=g) * 30).repeat_interleave(per_object, 0)
    centres = centres + torch.randn(centres.shape, generator=g) * sides * 0.2
    sides = sides * (1 + 0.2 * torch.randn(sides.shape, generator=g))
    n = objects * per_object
    scores = 0.05 + 0.95 * torch.rand(n, generator=g) ** 2
    return (torch.cat([centres - sides / 2, centres + sides / 2], dim=1), scores,
            torch.randint(0, num_labels, (n,), generator=g))


def touching_window(seed: int, objects: int = 24,
                    num_labels: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense window as on aerial trees: objects of 10-60 px, each touching one placed before it (their
    centres half their sides apart), 20-40 jittered candidates per object with decreasing scores, so that
    the candidates' overlaps chain into one big group per class."""
    g = torch.Generator().manual_seed(seed)
    centres, sides = [torch.zeros(2)], [10 + 50 * float(torch.rand(1, generator=g))]
    for _ in range(objects - 1):
        side = 10 + 50 * float(torch.rand(1, generator=g))
        parent = int(torch.randint(0, len(centres), (1,), generator=g))
        axis, sign = int(torch.randint(0, 2, (1,), generator=g)), float(torch.randint(0, 2, (1,), generator=g)) * 2 - 1
        offset = torch.zeros(2)
        offset[axis] = sign * (sides[parent] + side) / 2  # edge to edge
        offset[1 - axis] = (float(torch.rand(1, generator=g)) - 0.5) * min(sides[parent], side)
        centres.append(centres[parent] + offset)
        sides.append(side)
    boxes, scores, labels = [], [], []
    for centre, side in zip(centres, sides):
        n = int(torch.randint(20, 41, (1,), generator=g))
        c = centre + torch.randn(n, 2, generator=g) * side * 0.12
        s = side * torch.exp(torch.randn(n, 2, generator=g) * 0.15)
        boxes.append(torch.cat([c - s / 2, c + s / 2], dim=1))
        decreasing = torch.sort(torch.rand(n, generator=g), descending=True).values.clamp(min=0.08)
        scores.append((0.3 + 0.65 * torch.rand(1, generator=g)) * decreasing**1.5)
        labels.append(torch.randint(0, num_labels, (n,), generator=g))
    return torch.cat(boxes), torch.cat(scores), torch.cat(labels)


def overlap_groups(boxes: torch.Tensor, labels: torch.Tensor) -> int:
    """How many groups the boxes form when two boxes of a class with IoU > 0 are one group."""
    linked = (box_iou(boxes, boxes).nan_to_num(0.0) > 0) & (labels[:, None] == labels[None, :])
    group = torch.arange(len(boxes))
    while True:  # every box takes the smallest group id among the boxes it overlaps, until nothing changes
        smaller = torch.where(linked, group[None, :], len(boxes)).amin(dim=1).minimum(group)
        smaller = smaller[smaller]
        if torch.equal(smaller, group):
            return int(group.unique().numel())
        group = smaller


# The decayed scores are products of exp(-IoU^2 / sigma) in float32 against the reference's float64: an IoU is a
# few roundings off (relative 2^-22), its square twice that, and the exponent of a box still above the 1e-3 floor
# is at most ln(1000) ~ 7, so its exp is off by a relative 7 * 2^-21 ~ 3.3e-6 before the final product's roundings.
RTOL = 1e-5


def assert_one_at_a_time(keep: torch.Tensor, kept: torch.Tensor, expected: dict[int, float],
                         max_keep: int | None) -> None:
    """The literal algorithm's result: the same boxes, their scores to float32 rounding, in its order (by
    decreasing score, a tie to the lower index) wherever two scores are further apart than that rounding."""
    if max_keep is not None:  # the best max_keep over all classes
        expected = dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))[:max_keep])
    got, got_scores = keep.tolist(), kept.tolist()
    assert sorted(got) == sorted(expected)
    for i, score in zip(got, got_scores):
        assert score == pytest.approx(expected[i], rel=RTOL, abs=1e-7)
    reference = [expected[i] for i in got]
    assert all(a >= b * (1 - RTOL) for a, b in itertools.pairwise(reference))
    assert got_scores == sorted(got_scores, reverse=True)
    assert all(i < j for (i, a), (j, b) in itertools.pairwise(zip(got, got_scores)) if a == b)


@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize(("seed", "num_labels", "max_keep"), [(0, 1, None), (1, 3, None), (2, 2, 40), (3, 1, 7)])
def test_batched_soft_nms_equals_one_pick_at_a_time(monkeypatch: pytest.MonkeyPatch, block: int, seed: int,
                                                    num_labels: int, max_keep: int | None) -> None:
    """Several picks per step (boxes whose turn and score cannot change) = the literal algorithm: the same
    boxes, the same pick order, the same decayed scores (to float32 rounding of the decay products)."""
    import harnet.modeling.postprocess as postprocess

    monkeypatch.setattr(postprocess, "SOFT_NMS_BLOCK", block)
    boxes, scores, labels = clustered_candidates(seed, num_labels=num_labels)
    keep, kept = soft_nms(boxes, scores, labels, SIGMA, max_keep=max_keep)
    assert_one_at_a_time(keep, kept, reference_soft_nms(boxes, scores, labels, SIGMA, max_keep), max_keep)


@pytest.mark.parametrize("block", [3, 64])
@pytest.mark.parametrize(("seed", "num_labels", "max_keep"), [(0, 1, None), (1, 1, 30), (2, 3, None), (3, 3, 50)])
def test_soft_nms_on_a_dense_window(monkeypatch: pytest.MonkeyPatch, block: int, seed: int, num_labels: int,
                                    max_keep: int | None) -> None:
    """Touching objects: all candidates of a class are one group of overlapping boxes, the case where
    the picks of one step depend on each other most; still the literal algorithm's result."""
    import harnet.modeling.postprocess as postprocess

    monkeypatch.setattr(postprocess, "SOFT_NMS_BLOCK", block)
    boxes, scores, labels = touching_window(seed, num_labels=num_labels)
    assert overlap_groups(boxes, labels) == num_labels
    keep, kept = soft_nms(boxes, scores, labels, SIGMA, max_keep=max_keep)
    assert_one_at_a_time(keep, kept, reference_soft_nms(boxes, scores, labels, SIGMA, max_keep), max_keep)
    assert len(keep) == max_keep or len(keep) > 100


def test_soft_nms_on_one_object_and_on_one_box() -> None:
    """One object's candidates (one group, every box overlapping the best), and a single candidate."""
    boxes, scores, labels = touching_window(4, objects=1)
    assert overlap_groups(boxes, labels) == 1
    keep, kept = soft_nms(boxes, scores, labels, SIGMA)
    assert_one_at_a_time(keep, kept, reference_soft_nms(boxes, scores, labels, SIGMA, None), None)
    keep, kept = soft_nms(boxes[:1], scores[:1], labels[:1], SIGMA)
    assert keep.tolist() == [0] and kept.tolist() == scores[:1].tolist()


@pytest.mark.parametrize("block", [1, 64])
def test_soft_nms_ties_go_to_the_lower_index(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Equal scores: the lower index is picked first (as one at a time takes the first best), whether the
    other box overlaps it (it is then decayed) or not, inside a step's block or just outside it."""
    import harnet.modeling.postprocess as postprocess

    monkeypatch.setattr(postprocess, "SOFT_NMS_BLOCK", block)
    boxes = torch.tensor([[20.0, 20, 30, 30], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.full((4,), 0.9)
    labels = torch.zeros(4, dtype=torch.int64)
    keep, kept = soft_nms(boxes, scores, labels, SIGMA)
    assert keep.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(kept, torch.tensor([0.9, 0.9, 0.9 * math.exp(-1 / SIGMA), 0.9 * math.exp(-1 / SIGMA)]))


def test_overlapping_pairs_through_the_grid_are_every_pair_with_positive_iou() -> None:
    """The grid finds exactly the same-class pairs with IoU > 0 (with box_iou's value), each once, for the
    candidates themselves and for other boxes: empty boxes, boxes that only touch, a huge box, negative
    coordinates, exact copies, a box with NaN coordinates, a query of a class without candidates."""
    from harnet.modeling.postprocess import _grid, _pairs, _runs

    boxes, _, labels = random_detections(200, seed=5, extent=120, min_side=2, spread=30, num_labels=3)
    boxes = boxes - 20
    boxes[:10] = boxes[10:20]  # copies
    boxes[20:25, 2] = boxes[20:25, 0]  # empty
    boxes[25] = torch.tensor([-50.0, -40.0, 500.0, 400.0])  # huge
    boxes[26] = torch.tensor([boxes[27, 2], boxes[27, 1], boxes[27, 2] + 5, boxes[27, 3]])  # touches box 27
    labels[26] = labels[27]
    boxes[28, 1] = float("nan")
    queries = torch.cat([boxes, boxes[:40] + 3.5])
    query_labels = torch.cat([labels, labels[:40]])
    query_labels[-1] = 7  # no candidate of that class
    grid = _grid(boxes, labels)
    q, j, iou = _pairs(grid, _runs(grid, queries, query_labels), torch.arange(len(queries)))
    expected = (box_iou(queries, boxes).nan_to_num(0.0) > 0) & (query_labels[:, None] == labels[None, :])
    got = torch.zeros_like(expected)
    got[q, j] = True
    assert torch.equal(got, expected) and len(q) == int(expected.sum())
    assert torch.equal(iou, box_iou(queries, boxes)[q, j])
    assert not bool(got[26, 27]) and bool(got[:, 25].any())
    assert torch.equal(q, q.sort().values)  # grouped by query


def reference_box_voting(kept_boxes: list[list[float]], kept_scores: list[float], kept_labels: list[int],
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
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    candidates = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # itself (an exact duplicate of a kept box): never votes
            [1.0, 1.0, 11.0, 11.0],  # IoU 81/119 = 0.68 >= 0.6, score 0.6: votes
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 < 0.6: no vote
            [1.0, 1.0, 11.0, 11.0],  # overlapping but class 1: no vote
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.5, 0.8])
    labels = torch.tensor([0, 0, 0, 1])
    voted, voted_scores = box_voting(kept, torch.tensor([0.9]), torch.tensor([0]), candidates, scores, labels, 0.6)
    torch.testing.assert_close(voted, torch.tensor([[0.4, 0.4, 10.4, 10.4]]))
    torch.testing.assert_close(voted_scores, torch.tensor([1.5 / 5]))


def test_box_voting_equals_the_literal_reference() -> None:
    """``_bbox_voting`` of the authors' ``merge_proposal_layer.py``: random boxes in 3 classes, ties and
    exact duplicates of kept boxes included, kept boxes from Soft-NMS (which keeps most candidates, so
    few can vote) and from hard NMS (many can); equal to 1e-6."""
    for seed in range(6):
        boxes, scores, labels = random_detections(120, seed=seed, extent=30, min_side=8, spread=10, num_labels=3)
        boxes = boxes.round()  # coarse coordinates: many exact duplicates and equal IoUs
        scores = (scores * 10).round() / 10 + 0.05  # many tied scores
        boxes[60:70] = boxes[:10]  # exact duplicates
        if seed % 2:
            keep = batched_nms(boxes, scores, labels, 0.5)
            kept_scores = scores[keep]
        else:
            keep, kept_scores = soft_nms(boxes, scores, labels, SIGMA)
        got_boxes, got_scores = box_voting(boxes[keep], kept_scores, labels[keep], boxes, scores, labels, 0.6)
        ref_boxes, ref_scores = reference_box_voting(
            boxes[keep].tolist(), kept_scores.tolist(), labels[keep].tolist(), boxes.tolist(), scores.tolist(),
            labels.tolist(), 0.6)
        torch.testing.assert_close(got_boxes, torch.tensor(ref_boxes), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got_scores, torch.tensor(ref_scores), atol=1e-6, rtol=1e-6)
        assert bool((got_scores != kept_scores).any()) or not seed % 2  # voting re-scored some


def test_default_nms_path_equals_torchvision_batched_nms() -> None:
    """suppress() with the default config = batched_nms at 0.5, truncated to detections_per_img."""
    boxes, scores, labels = random_detections(300, seed=1, extent=100, min_side=4, spread=40, num_labels=4)
    cfg = InferenceConfig(detections_per_img=20)
    out = suppress(boxes, scores, labels, cfg)
    keep = batched_nms(boxes, scores, labels, 0.5)[:20]
    assert torch.equal(out["boxes"], boxes[keep])
    assert torch.equal(out["scores"], scores[keep])
    assert torch.equal(out["labels"], labels[keep])


def test_suppress_soft_nms_with_voting() -> None:
    """The paper's test recipe: Soft-NMS, voting (re-scoring), then score >= 0.05, at most 100, by score.

    Soft-NMS keeps every box above 1e-3, and a kept box never votes (exact duplicate of a kept box), so
    only what Soft-NMS removed can vote: here E, a near copy of A at score 0.002, decayed below 1e-3 by A.
    """
    boxes = torch.cat([BOXES, torch.tensor([[0.0, 0.0, 10.0, 9.5]])])
    scores, labels = torch.cat([SCORES, torch.tensor([0.002])]), torch.cat([LABELS, torch.tensor([0])])
    cfg = InferenceConfig(nms="soft_nms", soft_nms_sigma=SIGMA, box_voting_iou=0.6, final_score_thresh=0.05)
    out = suppress(boxes, scores, labels, cfg)
    keep, kept = soft_nms(boxes, scores, labels, SIGMA)
    assert 4 not in keep.tolist()
    voted, voted_scores = box_voting(boxes[keep], kept, labels[keep], boxes, scores, labels, 0.6)
    order = torch.argsort(voted_scores, descending=True)
    torch.testing.assert_close(out["scores"], voted_scores[order])
    torch.testing.assert_close(out["boxes"], voted[order])
    # A absorbs E: score (0.9 + 0.002) / 5, box their weighted mean; D (class 1) keeps box and score, ranks first.
    assert out["labels"].tolist()[0] == 1 and float(out["scores"][0]) == pytest.approx(0.85)
    a = int(torch.where((out["scores"] - 0.902 / 5).abs() < 1e-6)[0][0])
    torch.testing.assert_close(out["boxes"][a], (0.9 * boxes[0] + 0.002 * boxes[4]) / 0.902)
    # Scores below final_score_thresh are dropped after voting; at most detections_per_img remain.
    few = suppress(boxes, scores, labels, replace(cfg, final_score_thresh=0.5, detections_per_img=1))
    assert few["scores"].tolist() == pytest.approx([0.85])


def test_min_box_size_drops_small_candidates() -> None:
    """The authors drop boxes under 8 px at test time (``inference.min_box_size``)."""
    logits = torch.full((4, 1), 5.0)
    deltas = torch.zeros(4, 4)
    anchors = torch.tensor([[0, 0, 4, 4], [0, 0, 20, 20], [0, 0, 7.9, 30], [10, 10, 18, 18]], dtype=torch.float)
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    boxes, _, _ = select_candidates([logits], [deltas], [anchors], (64, 64), coder, InferenceConfig(min_box_size=8))
    assert sorted(boxes.tolist()) == anchors[[1, 3]].tolist()
    boxes, _, _ = select_candidates([logits], [deltas], [anchors], (64, 64), coder, InferenceConfig())
    assert boxes.shape[0] == 4


def test_zero_area_boxes_stay_finite_through_soft_nms_and_voting() -> None:
    """Boxes clipped flat at the image border have IoU 0/0 with each other; no NaN may leak out."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [64.0, 5.0, 64.0, 20.0], [64.0, 5.0, 64.0, 20.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0])
    cfg = InferenceConfig(nms="soft_nms", box_voting_iou=0.6)
    out = suppress(boxes, scores, labels, cfg)
    assert len(out["scores"]) == 3
    assert bool(torch.isfinite(out["boxes"]).all()) and bool(torch.isfinite(out["scores"]).all())
    torch.testing.assert_close(out["boxes"][1:], boxes[1:])
