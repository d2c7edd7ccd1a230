"""harnet.deploy's numpy pre/post-processing against the torch implementations it mirrors, on random
inputs: resize/normalise/pad, anchors, candidate selection, NMS, Soft-NMS and box voting."""

from __future__ import annotations

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


def test_empty_inputs() -> None:
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    for recipe in (InferenceConfig(), replace(InferenceConfig(), nms="soft_nms", box_voting_iou=0.6)):
        assert npp.suppress(*empty, recipe)["boxes"].shape == (0, 4)
