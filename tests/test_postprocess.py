"""Post-processing: Gaussian Soft-NMS and box voting against hand-computed values; NMS = torchvision's."""

from __future__ import annotations

import math

import torch
from torchvision.ops import batched_nms, box_iou

from harnet.config import InferenceConfig
from harnet.postprocess import SOFT_NMS_MIN_SCORE, box_voting, soft_nms, suppress

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


def test_box_voting_matches_weighted_mean() -> None:
    """Kept box -> score-weighted mean of same-class candidates with IoU >= 0.6 (itself included)."""
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    candidates = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # itself, score 0.9
            [1.0, 1.0, 11.0, 11.0],  # IoU 81/119 = 0.68 >= 0.6, score 0.6: votes
            [0.0, 0.0, 10.0, 20.0],  # IoU 0.5 < 0.6: no vote
            [1.0, 1.0, 11.0, 11.0],  # overlapping but class 1: no vote
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.5, 0.8])
    labels = torch.tensor([0, 0, 0, 1])
    voted = box_voting(kept, torch.tensor([0]), candidates, scores, labels, iou_thresh=0.6)
    expected = (0.9 * torch.tensor([0.0, 0.0, 10.0, 10.0]) + 0.6 * torch.tensor([1.0, 1.0, 11.0, 11.0])) / 1.5
    torch.testing.assert_close(voted, expected[None])
    torch.testing.assert_close(expected, torch.tensor([0.4, 0.4, 10.4, 10.4]))


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
    """The paper's test recipe path: Soft-NMS scores are kept, the boxes are voted."""
    cfg = InferenceConfig(nms="soft_nms", soft_nms_sigma=SIGMA, box_voting_iou=0.6)
    out = suppress(BOXES, SCORES, LABELS, cfg)
    keep, scores = soft_nms(BOXES, SCORES, LABELS, SIGMA, cfg.detections_per_img)
    torch.testing.assert_close(out["scores"], scores)
    assert torch.equal(out["labels"], LABELS[keep])
    voted = box_voting(BOXES[keep], LABELS[keep], BOXES, SCORES, LABELS, 0.6)
    torch.testing.assert_close(out["boxes"], voted)
    # A (IoU 0.8 with C) is pulled towards C; D (alone in class 1) is unchanged.
    torch.testing.assert_close(out["boxes"][0], (0.9 * BOXES[0] + 0.7 * BOXES[2]) / 1.6)
    torch.testing.assert_close(out["boxes"][1], BOXES[3])


def test_zero_area_boxes_stay_finite_through_soft_nms_and_voting() -> None:
    """Boxes clipped flat at the image border have IoU 0/0 with each other; no NaN may leak out."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [64.0, 5.0, 64.0, 20.0], [64.0, 5.0, 64.0, 20.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 0])
    cfg = InferenceConfig(nms="soft_nms", box_voting_iou=0.6)
    out = suppress(boxes, scores, labels, cfg)
    assert len(out["scores"]) == 3
    assert bool(torch.isfinite(out["boxes"]).all()) and bool(torch.isfinite(out["scores"]).all())
    torch.testing.assert_close(out["boxes"][1:], boxes[1:])
