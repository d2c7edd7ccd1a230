"""harnet.deploy's numpy pre/post-processing against the torch implementations it mirrors, on random
inputs: resize/normalise/pad, anchors, candidate selection, NMS, Soft-NMS and box voting; Soft-NMS also
against the literal one-pick-at-a-time algorithm on a dense window."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
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


@pytest.mark.parametrize("block", [3, 64])
@pytest.mark.parametrize(("seed", "classes", "max_keep"), [(0, 1, None), (1, 1, 25), (2, 3, None), (3, 2, 60)])
def test_soft_nms_numpy_torch_and_one_at_a_time(monkeypatch: pytest.MonkeyPatch, block: int, seed: int,
                                                classes: int, max_keep: int | None) -> None:
    """On a dense window (one group of overlapping candidates per class), numpy = torch = the literal
    algorithm: the same picks in the same order, scores to float32 rounding."""
    monkeypatch.setattr(npp, "SOFT_NMS_BLOCK", block)
    monkeypatch.setattr(tpp, "SOFT_NMS_BLOCK", block)
    boxes, scores, labels = _dense_window(seed, classes=classes)
    keep, kept = npp.soft_nms(boxes, scores, labels, 0.5, max_keep=max_keep)
    t_keep, t_kept = tpp.soft_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5,
                                  max_keep=max_keep)
    expected = _one_at_a_time(boxes, scores, labels, 0.5, max_keep)
    _assert_same_picks(keep, kept, expected)
    _assert_same_picks(t_keep.numpy(), t_kept.numpy(), expected)
    assert kept.dtype == np.float32 and len(keep) == (max_keep or len(keep)) and len(keep) > 20


@pytest.mark.parametrize("table", [True, False])
def test_overlapping_pairs_numpy_equal_torch(monkeypatch: pytest.MonkeyPatch, table: bool) -> None:
    """The grid's pairs (query, candidate, IoU): numpy and torch give the same ones in the same order, the
    IoUs bit for bit, and they are every same-class pair with IoU > 0 (queries: the candidates and others),
    whether a grid's runs are looked up in a table or binary searched."""
    if not table:
        monkeypatch.setattr(npp, "_cell_starts", lambda key, keys: None)
        monkeypatch.setattr(tpp, "_cell_starts", lambda key, keys: None)
    boxes, _, labels = _candidates(4, n=400, classes=3)
    boxes[:7, 2] = boxes[:7, 0]  # empty
    boxes[7] = [-30, -30, 500, 400]  # huge
    queries = np.concatenate([boxes, boxes[:50] + 2.5]).astype(np.float32)
    query_labels = np.concatenate([labels, labels[:50]])
    grid = npp._grid(boxes, labels)
    assert (grid.starts is not None) == table
    got = npp._pairs(grid, npp._runs(grid, queries, query_labels), np.arange(len(queries)))
    t_grid = tpp._grid(torch.from_numpy(boxes), torch.from_numpy(labels))
    t_got = tpp._pairs(t_grid, tpp._runs(t_grid, torch.from_numpy(queries), torch.from_numpy(query_labels)),
                       torch.arange(len(queries)))
    for a, b in zip(got, t_got):
        np.testing.assert_array_equal(a, b.numpy())
    expected = (np.nan_to_num(npp.box_iou(queries, boxes)) > 0) & (query_labels[:, None] == labels[None, :])
    assert sorted(zip(got[0].tolist(), got[1].tolist())) == sorted(zip(*np.nonzero(expected)))


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


@pytest.mark.parametrize("mode", ["level", "torchvision"])
def test_anchors_match_the_generator(mode: str) -> None:
    cfg = AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0), stride_mode=mode)  # type: ignore[arg-type]
    for padded in [(96, 160), (320, 320)]:
        expected = build_anchor_generator(cfg).grid(padded, level_shapes(*padded), 1)[0]
        np.testing.assert_array_equal(grid_anchors(cfg, padded), expected.numpy())


def test_candidates_match() -> None:
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
                                [torch.from_numpy(x) for x in anchors], (90, 110), tpp.build_box_coder(), cfg)
    np.testing.assert_array_equal(got[2], exp[2].numpy())
    np.testing.assert_allclose(got[1], exp[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[0], exp[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_torchvision(seed: int) -> None:
    boxes, scores, labels = _candidates(seed)
    expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5)
    np.testing.assert_array_equal(npp.batched_nms(boxes, scores, labels, 0.5), expected.numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("recipe", [
    InferenceConfig(nms="soft_nms"),
    InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05),
    InferenceConfig(nms="nms", box_voting_iou=0.6, detections_per_img=20),
    InferenceConfig(),
])
def test_suppress_matches_torch(seed: int, recipe: InferenceConfig) -> None:
    boxes, scores, labels = _candidates(seed)
    got = npp.suppress(boxes, scores, labels, recipe)
    exp = tpp.suppress(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), recipe)
    assert len(got["scores"]) > 10
    np.testing.assert_array_equal(got["labels"], exp["labels"].numpy())
    np.testing.assert_allclose(got["scores"], exp["scores"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], exp["boxes"].numpy(), atol=1e-3)


def test_soft_nms_matches_torch_with_max_keep() -> None:
    boxes, scores, labels = _candidates(3)
    keep, kept = npp.soft_nms(boxes, scores, labels, 0.5, max_keep=30)
    t_keep, t_kept = tpp.soft_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5,
                                  max_keep=30)
    np.testing.assert_array_equal(keep, t_keep.numpy())
    np.testing.assert_allclose(kept, t_kept.numpy(), rtol=1e-5)


@pytest.mark.parametrize("iou_thresh", [0.6, 0.0])
def test_box_voting_matches_torch_for_other_kept_boxes(iou_thresh: float) -> None:
    """Voting with kept boxes that are not candidates (the grid queried with other boxes), and with a
    threshold of 0, where every candidate of the class can vote."""
    boxes, scores, labels = _candidates(5)
    kept = boxes[::7] + np.float32(1.5)
    kept_scores, kept_labels = scores[::7], labels[::7]
    got = npp.box_voting(kept, kept_scores, kept_labels, boxes, scores, labels, iou_thresh)
    exp = tpp.box_voting(*(torch.from_numpy(x) for x in (kept, kept_scores, kept_labels, boxes, scores, labels)),
                         iou_thresh)
    np.testing.assert_allclose(got[0], exp[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got[1], exp[1].numpy(), rtol=1e-6)
    assert (got[1] != kept_scores).any()


def test_suppress_authors_recipe_on_a_dense_window_matches_torch() -> None:
    """Soft-NMS + voting + score floor on a dense window with two classes: numpy = torch."""
    boxes, scores, labels = _dense_window(5, classes=2)
    recipe = InferenceConfig(nms="soft_nms", box_voting_iou=0.6, final_score_thresh=0.05)
    got = npp.suppress(boxes, scores, labels, recipe)
    exp = tpp.suppress(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), recipe)
    assert len(got["scores"]) == recipe.detections_per_img
    np.testing.assert_array_equal(got["labels"], exp["labels"].numpy())
    np.testing.assert_allclose(got["scores"], exp["scores"].numpy(), rtol=RTOL)
    np.testing.assert_allclose(got["boxes"], exp["boxes"].numpy(), atol=1e-3)


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
