"""COCO's matching and AP redone in numpy (``harnet.engine.box_matching``) give pycocotools' own numbers."""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np
import pytest
from coco_cases import CATEGORIES, random_case
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harnet.engine.box_matching import box_iou, coco_ap, group_by_image, match, per_class


def cocoeval(gt: dict[str, Any], dets: list[dict[str, Any]]) -> COCOeval:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev


def test_box_iou_is_pycocotools_iou() -> None:
    rng = np.random.default_rng(0)
    dt = np.c_[rng.uniform(0, 50, (30, 2)), rng.uniform(0.5, 40, (30, 2))]
    gt = np.c_[rng.uniform(0, 50, (12, 2)), rng.uniform(0.5, 40, (12, 2))]
    crowd = rng.random(12) < 0.3
    expected = mask_utils.iou(dt.tolist(), gt.tolist(), crowd.astype(np.uint8).tolist())
    np.testing.assert_allclose(box_iou(dt, gt, crowd), expected, rtol=1e-12, atol=1e-15)
    assert box_iou(dt, np.zeros((0, 4)), np.zeros(0, bool)).shape == (30, 0)


@pytest.mark.parametrize(("seed", "crowded_image"), [(0, False), (1, False), (2, True)])
def test_ap_per_class_and_iou_equals_pycocotools(seed: int, crowded_image: bool) -> None:
    """Every (IoU, class) AP of the 10 COCO IoUs, from these matches, is pycocotools' own to rounding: same
    matches, same order of equal scores, same crowd rule, same 100-per-image cut."""
    gt, dets = random_case(seed, crowded_image=crowded_image)
    ev = cocoeval(gt, dets)
    images = group_by_image(gt, dets, CATEGORIES)
    assert [im.image_id for im in images] == ev.params.imgIds
    for t, iou in enumerate(ev.params.iouThrs):
        classes = per_class(images, match(images, float(iou)), len(CATEGORIES))
        for k, c in enumerate(classes):
            ap, envelope = coco_ap(c.scores, c.true, c.num_gt)
            theirs = ev.eval["precision"][t, :, k, 0, -1]
            if (theirs > -1).any():
                np.testing.assert_allclose(envelope, theirs, rtol=0, atol=1e-12)
                assert ap == pytest.approx(float(theirs.mean()), abs=1e-12)
            else:
                assert c.num_gt == 0 and np.isnan(ap)


def test_of_equal_ious_the_last_object_is_taken_and_a_crowd_region_only_when_nothing_else_matches() -> None:
    gt = {"images": [{"id": 1, "file_name": "a.png"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                          {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 100], "iscrowd": 1}],
          "categories": [{"id": 3}]}
    dets = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": s} for s in (0.9, 0.8, 0.7)]
    images = group_by_image(gt, dets, [3])
    m = match(images, 0.5)
    assert m.dt_gt[0].tolist() == [1, 0, 2]  # the last equal object first, then the other, then the crowd region
    assert m.dt_ignored[0].tolist() == [False, False, True]
    assert m.gt_dt[0].tolist() == [1, 0, -1]
    assert m.true(0).tolist() == [True, True, False] and not m.false(0).any()


def test_an_image_without_detections_or_objects_and_unknown_ids() -> None:
    gt, dets = random_case(3, images=3)
    gt["images"].append({"id": 1, "file_name": "empty.png"})
    images = group_by_image(gt, dets, CATEGORIES, image_ids=[1])
    assert len(images) == 1 and images[0].num_gt == images[0].num_dt == 0
    assert images[0].ious.shape == (0, 0)
    assert match(images, 0.5).dt_gt[0].shape == (0,)
    with pytest.raises(ValueError, match="absent from the ground truth"):
        group_by_image(gt, dets, CATEGORIES, image_ids=[2])
    assert coco_ap(np.zeros(0), np.zeros(0, bool), 3)[0] == 0.0
