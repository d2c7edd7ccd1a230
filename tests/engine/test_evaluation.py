"""Tests of harnet.engine.evaluation against pycocotools run directly on the same results."""

from __future__ import annotations

import contextlib
import io
import json
import math
from types import SimpleNamespace

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from harnet.engine.evaluation import (
    STAT_NAMES,
    EvalResult,
    evaluate_coco,
    evaluate_predictions,
    to_coco_results,
)

CATEGORY_IDS = [1, 5, 90]
CLASS_NAMES = ["person", "car", "toothbrush"]

# image id -> list of (category id, XYXY box, iscrowd). Small (<32^2), medium and large boxes all occur.
GT_BOXES: dict[int, list[tuple[int, list[float], int]]] = {
    1: [(1, [10, 10, 110, 210], 0), (5, [200, 50, 260, 100], 0), (5, [300, 300, 320, 320], 0)],
    2: [(1, [50, 60, 90, 140], 0), (1, [400, 100, 600, 400], 1), (5, [0, 0, 150, 120], 0)],
    3: [(90, [100, 100, 130, 115], 0), (1, [20, 300, 220, 470], 0)],
}


def _xyxy_to_xywh(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


def make_gt() -> COCO:
    coco = COCO()
    anns = []
    for image_id, boxes in GT_BOXES.items():
        for cat_id, box, crowd in boxes:
            xywh = _xyxy_to_xywh(box)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id,
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": crowd,
                }
            )
    coco.dataset = {
        "images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in GT_BOXES],
        "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES, strict=True)],
        "annotations": anns,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _pred(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def perfect_predictions() -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    ids, preds = [], []
    for image_id, boxes in GT_BOXES.items():
        kept = [(c, b) for c, b, crowd in boxes if not crowd]
        preds.append(_pred([b for _, b in kept], [0.9] * len(kept), [CATEGORY_IDS.index(c) for c, _ in kept]))
        ids.append(image_id)
    return ids, preds


def mixed_predictions() -> tuple[list[int], list[dict[str, torch.Tensor]]]:
    """Perfect, shifted and false-positive boxes; class 'toothbrush' (id 90) is never predicted."""
    preds = [
        _pred(
            [[10, 10, 110, 210], [205.3, 52.7, 262.1, 101.9], [500, 400, 560, 460], [301, 299, 321, 322]],
            [0.95, 0.80, 0.60, 0.30],
            [0, 1, 1, 1],
        ),
        _pred(
            [[52.5, 58.25, 91.0, 150.0], [410, 110, 590, 390], [0, 0, 150, 120], [10, 10, 40, 40]],
            [0.70, 0.99, 0.85, 0.55],
            [0, 0, 1, 0],
        ),
        _pred([[30, 310, 230, 460], [100, 100, 130, 115]], [0.65, 0.40], [0, 1]),
    ]
    return [1, 2, 3], preds


def direct_cocoeval(coco_gt: COCO, results: list[dict], **params) -> COCOeval:
    """Reference: plain pycocotools on a JSON round trip of the results."""
    with contextlib.redirect_stdout(io.StringIO()):
        cocoeval = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), "bbox")
        for key, value in params.items():
            setattr(cocoeval.params, key, value)
        cocoeval.evaluate()
        cocoeval.accumulate()
        cocoeval.summarize()
    return cocoeval


def test_to_coco_results_maps_sparse_ids_and_converts_boxes():
    preds = [
        _pred([[1.5, 2.25, 11.5, 22.25], [0, 0, 4, 8]], [0.5, 0.25], [2, 0]),
        _pred([], [], []),
        _pred([[3, 4, 5, 6]], [0.125], [1]),
    ]
    results = to_coco_results([7, 8, 9], preds, CATEGORY_IDS)
    assert results == [
        {"image_id": 7, "category_id": 90, "bbox": [1.5, 2.25, 10.0, 20.0], "score": 0.5},
        {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 8.0], "score": 0.25},
        {"image_id": 9, "category_id": 5, "bbox": [3.0, 4.0, 2.0, 2.0], "score": 0.125},
    ]
    for r in results:
        assert type(r["image_id"]) is int and type(r["category_id"]) is int
        assert type(r["score"]) is float and all(type(v) is float for v in r["bbox"])
    json.dumps(results)


def test_to_coco_results_validates_input():
    with pytest.raises(ValueError, match="image ids"):
        to_coco_results([1, 2], [_pred([], [], [])], CATEGORY_IDS)
    with pytest.raises(ValueError, match="labels"):
        to_coco_results([1], [_pred([[0, 0, 1, 1]], [0.5], [3])], CATEGORY_IDS)


def test_stats_equal_pycocotools_exactly():
    coco_gt = make_gt()
    results = to_coco_results(*mixed_predictions(), CATEGORY_IDS)
    snapshot = json.dumps(results)
    res = evaluate_coco(coco_gt, results, CLASS_NAMES, CATEGORY_IDS)
    assert json.dumps(results) == snapshot  # caller's list is not mutated by loadRes

    ref = direct_cocoeval(coco_gt, results)
    assert list(res.stats) == list(STAT_NAMES)
    assert res.stats == dict(zip(STAT_NAMES, ref.stats.tolist(), strict=True))
    assert 0.0 < res.stats["AP"] < 1.0
    assert res.num_images == 3 and res.num_detections == len(results) == 10

    # Per-class AP equals COCOeval restricted to that single category.
    for name, cat_id in zip(CLASS_NAMES, CATEGORY_IDS, strict=True):
        assert res.per_class_ap[name] == direct_cocoeval(coco_gt, results, catIds=[cat_id]).stats[0]
    assert res.per_class_ap["toothbrush"] == 0.0  # has GT, never predicted
    assert 0.0 < res.per_class_ap["person"] < 1.0


def test_image_subset_equals_pycocotools_and_nan_for_class_without_gt():
    coco_gt = make_gt()
    results = to_coco_results(*mixed_predictions(), CATEGORY_IDS)
    res = evaluate_coco(coco_gt, results, CLASS_NAMES, CATEGORY_IDS, image_ids=[2, 1])
    ref = direct_cocoeval(coco_gt, results, imgIds=[1, 2])
    assert res.stats == dict(zip(STAT_NAMES, ref.stats.tolist(), strict=True))
    assert res.num_images == 2 and res.num_detections == 8
    assert math.isnan(res.per_class_ap["toothbrush"])  # no GT in images 1 and 2
    assert res.to_dict()["per_class_ap"]["toothbrush"] is None


def test_perfect_detections_give_ap_one():
    coco_gt = make_gt()
    ids, preds = perfect_predictions()
    res = evaluate_predictions(
        SimpleNamespace(coco=coco_gt, category_ids=CATEGORY_IDS, class_names=CLASS_NAMES), ids, preds
    )
    assert res.stats["AP"] == 1.0
    # pycocotools divides by tp + fp + eps, so a lone perfect box scores 1 - 2e-16, not exactly 1.
    for key in ("AP50", "AP75", "APs", "APm", "APl", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert res.stats[key] == pytest.approx(1.0, abs=1e-12), key
    assert res.per_class_ap == pytest.approx(dict.fromkeys(CLASS_NAMES, 1.0), abs=1e-12)


def test_wrong_category_mapping_is_penalised():
    """Labels must be mapped to the sparse ids: a shifted mapping must not score as perfect."""
    coco_gt = make_gt()
    ids, preds = perfect_predictions()
    results = to_coco_results(ids, preds, [5, 90, 1])
    res = evaluate_coco(coco_gt, results, CLASS_NAMES, CATEGORY_IDS)
    assert res.stats["AP"] == 0.0


def test_zero_detections_give_zeros():
    coco_gt = make_gt()
    ids = [1, 2, 3]
    preds = [_pred([], [], []) for _ in ids]
    dataset = SimpleNamespace(coco=coco_gt, category_ids=CATEGORY_IDS, class_names=CLASS_NAMES)
    res = evaluate_predictions(dataset, ids, preds)
    assert res.stats == dict.fromkeys(STAT_NAMES, 0.0)
    assert res.per_class_ap == dict.fromkeys(CLASS_NAMES, 0.0)
    assert res.num_detections == 0 and res.num_images == 3

    # Classes without GT in the evaluated images stay undefined rather than zero.
    res = evaluate_coco(coco_gt, [], CLASS_NAMES, CATEGORY_IDS, image_ids=[1])
    assert res.per_class_ap["person"] == 0.0 and res.per_class_ap["car"] == 0.0
    assert math.isnan(res.per_class_ap["toothbrush"])
    assert "toothbrush" in res.table()


def test_unknown_image_id_is_reported():
    results = [{"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5}]
    with pytest.raises(ValueError, match="42"):
        evaluate_coco(make_gt(), results, CLASS_NAMES, CATEGORY_IDS)


def test_table_and_json(tmp_path):
    coco_gt = make_gt()
    results = to_coco_results(*mixed_predictions(), CATEGORY_IDS)
    res = evaluate_coco(coco_gt, results, CLASS_NAMES, CATEGORY_IDS, image_ids=[1, 2])
    table = res.table()
    for name in (*CLASS_NAMES, *STAT_NAMES):
        assert name in table
    assert f"{100 * res.stats['AP']:.3f}" in table
    assert " - " in table  # toothbrush has no GT in images 1, 2
    stats_block, class_block = table.split("\n\n")
    assert len({len(line) for line in stats_block.splitlines()[1:]}) == 1  # fixed width
    assert len({len(line) for line in class_block.splitlines()}) == 1

    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["stats"]["AP"] == res.stats["AP"]
    path = tmp_path / "sub" / "metrics.json"
    res.save_json(path)
    assert json.loads(path.read_text()) == d

    back = EvalResult(
        **{**d, "per_class_ap": {k: math.nan if v is None else v for k, v in d["per_class_ap"].items()}}
    )
    assert back.stats == res.stats


def test_summary_table_has_ap_ap50_ap75_and_each_class():
    coco_gt = make_gt()
    results = to_coco_results(*mixed_predictions(), CATEGORY_IDS)
    res = evaluate_coco(coco_gt, results, CLASS_NAMES, CATEGORY_IDS, image_ids=[1, 2])
    lines = res.summary_table().splitlines()
    assert lines[0] == "COCO box AP: 2 images, 8 detections"
    values = {line.split()[0]: line.split()[-1] for line in lines[1:] if len(line.split()) == 2}
    assert values["AP@[.5:.95]"] == f"{res.stats['AP']:.3f}" and values["AP50"] == f"{res.stats['AP50']:.3f}"
    assert values["AP75"] == f"{res.stats['AP75']:.3f}"
    assert values["person"] == f"{res.per_class_ap['person']:.3f}" and values["toothbrush"] == "-"
    assert len({line.index(values[name]) for line in lines for name in ("AP50", "person") if name in line}) == 1
