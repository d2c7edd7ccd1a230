"""Post-processing in torch: candidate selection, :class:`DenseOutputs`, and ``suppress`` as an adapter
to the one (numpy) suppression of :mod:`harnet.deploy.postprocess`, whose algorithm is tested in
tests/deploy/test_deploy_postprocess.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms

from harnet.config.model import BackboneConfig, HARNetConfig, InferenceConfig
from harnet.deploy import postprocess as npp
from harnet.modeling.harnet import HARNet
from harnet.modeling.postprocess import (
    SOFT_NMS_MIN_SCORE,
    DenseOutputs,
    build_box_coder,
    select_candidates,
    suppress,
)

RECIPES = [
    InferenceConfig(),
    InferenceConfig(nms="soft_nms", soft_nms_sigma=0.5, box_voting_iou=0.6, final_score_thresh=0.05),
    InferenceConfig(nms="nms", box_voting_iou=0.6, detections_per_img=20),
]


def random_detections(n: int, seed: int, num_labels: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded random candidates, clustered enough for suppression and voting to act."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 40], dim=1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, num_labels, (n,), generator=g)


def test_one_definition_of_the_soft_nms_floor() -> None:
    assert SOFT_NMS_MIN_SCORE is npp.SOFT_NMS_MIN_SCORE


@pytest.mark.parametrize("recipe", RECIPES)
def test_suppress_is_the_numpy_suppression(recipe: InferenceConfig) -> None:
    """The adapter gives exactly what :func:`harnet.deploy.postprocess.suppress` gives, as tensors."""
    boxes, scores, labels = random_detections(300, seed=1)
    out = suppress(boxes, scores, labels, recipe)
    expected = npp.suppress(boxes.numpy(), scores.numpy(), labels.numpy(), recipe)
    assert len(out["scores"]) > 10
    for key in ("boxes", "scores", "labels"):
        assert isinstance(out[key], torch.Tensor)
        np.testing.assert_array_equal(out[key].numpy(), expected[key])


def test_default_nms_path_equals_torchvision_batched_nms() -> None:
    """suppress() with the default config = torchvision's RetinaNet: batched_nms at 0.5, truncated to
    detections_per_img."""
    boxes, scores, labels = random_detections(300, seed=1, num_labels=4)
    cfg = InferenceConfig(detections_per_img=20)
    out = suppress(boxes, scores, labels, cfg)
    keep = batched_nms(boxes, scores, labels, 0.5)[:20]
    assert torch.equal(out["boxes"], boxes[keep])
    assert torch.equal(out["scores"], scores[keep])
    assert torch.equal(out["labels"], labels[keep])


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.int64), (torch.float64, torch.int32),
                                    (torch.float16, torch.int64)])
def test_suppress_keeps_the_input_dtypes(dtypes: tuple[torch.dtype, torch.dtype]) -> None:
    """Detections come back in the dtypes they came in (the numpy side works in float32 / int64)."""
    float_dtype, label_dtype = dtypes
    boxes, scores, labels = random_detections(100, seed=2)
    out = suppress(boxes.to(float_dtype), scores.to(float_dtype), labels.to(label_dtype), RECIPES[1])
    assert out["boxes"].dtype == out["scores"].dtype == float_dtype
    assert out["labels"].dtype == label_dtype
    assert out["boxes"].shape == (len(out["scores"]), 4) and len(out["labels"]) == len(out["scores"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_suppress_empty_input(recipe: InferenceConfig) -> None:
    out = suppress(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), recipe)
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)
    assert out["boxes"].dtype == torch.float32 and out["labels"].dtype == torch.int64


def test_suppress_accepts_tensors_that_require_grad() -> None:
    boxes, scores, labels = random_detections(50, seed=3)
    out = suppress(boxes.requires_grad_(), scores.requires_grad_(), labels, RECIPES[0])
    assert not out["boxes"].requires_grad and len(out["scores"]) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_suppress_returns_to_the_input_device() -> None:
    """GPU candidates cross to the host for suppression and their detections come back to the GPU,
    equal to the CPU path."""
    boxes, scores, labels = random_detections(300, seed=4)
    for recipe in RECIPES:
        cpu = suppress(boxes, scores, labels, recipe)
        gpu = suppress(boxes.cuda(), scores.cuda(), labels.cuda(), recipe)
        for key in ("boxes", "scores", "labels"):
            assert gpu[key].device.type == "cuda"
            assert torch.equal(gpu[key].cpu(), cpu[key])


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


def test_select_candidates_thresholds_and_top_k_per_level() -> None:
    """Per level: scores above ``score_thresh``, the ``topk_candidates`` best of those, labels = class
    index, boxes decoded and clipped to the image."""
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(14, 3, generator=g) * 3 for _ in range(2)]
    deltas = [torch.randn(14, 4, generator=g) * 0.1 for _ in range(2)]
    anchors = [torch.tensor([[0.0, 0.0, 30.0, 30.0]]).repeat(14, 1) + i for i in range(2)]
    cfg = InferenceConfig(score_thresh=0.3, topk_candidates=5)
    boxes, scores, labels = select_candidates(logits, deltas, anchors, (25, 28), build_box_coder(), cfg)
    per_level = [min(5, int((torch.sigmoid(x) > 0.3).sum())) for x in logits]
    assert len(scores) == sum(per_level)
    first = torch.sigmoid(logits[0]).flatten().sort(descending=True).values[: per_level[0]]
    torch.testing.assert_close(scores[: per_level[0]], first)
    assert bool((scores > 0.3).all()) and bool(((labels >= 0) & (labels < 3)).all())
    assert bool((boxes[:, 0::2] <= 28).all()) and bool((boxes[:, 1::2] <= 25).all()) and bool((boxes >= 0).all())


def _dense_outputs(seed: int) -> DenseOutputs:
    g = torch.Generator().manual_seed(seed)
    per_level = [48, 12]
    anchors = []
    for _ in range(2):
        xy = torch.rand(sum(per_level), 2, generator=g) * 50
        anchors.append(torch.cat([xy, xy + 8 + torch.rand(sum(per_level), 2, generator=g) * 20], dim=1))
    return DenseOutputs(torch.randn(2, sum(per_level), 2, generator=g), torch.randn(2, sum(per_level), 4,
                                                                                  generator=g) * 0.2,
                        anchors, per_level, [(60, 64), (56, 48)])


@pytest.mark.parametrize("recipe", RECIPES)
def test_dense_outputs_decode_each_image_by_its_levels(recipe: InferenceConfig) -> None:
    """``candidates`` = :func:`select_candidates` on each image's levels (its own size); ``detections`` =
    :func:`suppress` on those."""
    dense = _dense_outputs(0)
    coder = build_box_coder()
    candidates = dense.candidates(coder, recipe)
    detections = dense.detections(coder, recipe)
    assert len(candidates) == len(detections) == 2
    for i, ((boxes, scores, labels), det) in enumerate(zip(candidates, detections)):
        split = [list(x.split(dense.num_anchors_per_level)) for x in (dense.cls_logits[i], dense.box_deltas[i],
                                                                    dense.anchors[i])]
        expected = select_candidates(*split, dense.image_sizes[i], coder, recipe)
        for got, exp in zip((boxes, scores, labels), expected):
            assert torch.equal(got, exp)
        direct = suppress(boxes, scores, labels, recipe)
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(det[key], direct[key])
        assert len(det["scores"]) > 0


def test_harnet_eval_detections_go_through_the_numpy_suppression(monkeypatch: pytest.MonkeyPatch) -> None:
    """``HARNet.forward`` in eval mode suppresses with :func:`harnet.deploy.postprocess.suppress`, once per
    image, on float32 / int64 numpy arrays."""
    cfg = HARNetConfig.preset("retinanet", num_classes=2,
                              backbone=BackboneConfig("resnet18", norm="bn", trainable_layers=5))
    cfg.fpn.channels = 32
    cfg.transform.min_size = (64,)
    cfg.transform.max_size = 96
    cfg.inference.score_thresh = 0.0
    cfg.inference.final_score_thresh = 0.0
    torch.manual_seed(0)
    model = HARNet(cfg).eval()
    calls: list[tuple[np.dtype[Any], np.dtype[Any], np.dtype[Any]]] = []
    original = npp.suppress

    def spy(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
            inference: InferenceConfig) -> dict[str, np.ndarray]:
        calls.append((boxes.dtype, scores.dtype, labels.dtype))
        return original(boxes, scores, labels, inference)

    monkeypatch.setattr(npp, "suppress", spy)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = model([torch.rand(3, 64, 80, generator=g), torch.rand(3, 72, 64, generator=g)])
    assert calls == [(np.dtype(np.float32), np.dtype(np.float32), np.dtype(np.int64))] * 2
    assert all(len(det["scores"]) > 0 and det["boxes"].dtype == torch.float32 for det in out)
