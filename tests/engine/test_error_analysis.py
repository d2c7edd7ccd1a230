"""``analyse``: per-class COCO AP as pycocotools gives it, precision/recall/F1 and the threshold of best F1,
the confusion matrix and the galleries, on hand-made cases whose numbers are worked out by hand."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from coco_cases import CATEGORIES, random_case

from harnet.data.records import coco_from_dict
from harnet.engine.error_analysis import analyse
from harnet.engine.evaluation import evaluate_coco


def image(objects: list[tuple[int, list[float]]], detections: list[tuple[int, list[float], float]],
          classes: int = 2) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (c, b) in enumerate(objects)],
          "categories": [{"id": c + 1, "name": f"c{c + 1}"} for c in range(classes)]}
    return gt, [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in detections]


def box(k: int, dx: float = 0.0) -> list[float]:
    return [30.0 * k + dx, 0.0, 20.0, 20.0]


# Three objects; detections alternately true and false by score: 0.9 T, 0.8 F, 0.7 T, 0.6 F, 0.5 T. The third
# true one is 8 px off (IoU 240/560 = 0.43): true at IoU 0.4, false at 0.5.
THREE = image([(1, box(0)), (1, box(1)), (1, box(2))],
              [(1, box(0), 0.9), (1, box(5), 0.8), (1, box(1), 0.7), (1, box(6), 0.6), (1, box(2, 8), 0.5)], classes=1)


def test_precision_recall_f1_and_the_threshold_of_best_f1() -> None:
    # F1 = 2 TP / (detections + objects): 2/4, 2/5, 4/6, 4/7 at 0.9 .. 0.6; at 0.5: 6/8 at IoU 0.4, 4/8 at 0.5
    a = analyse(*THREE, ["c1"], [1], iou=0.4)
    assert (a.score, a.score_chosen_by) == (0.5, "best F1")
    row = a.classes[0]
    assert (row.true_positives, row.false_positives, row.false_negatives) == (3, 2, 0)
    assert (row.precision, row.recall, row.f1) == (pytest.approx(0.6), 1.0, pytest.approx(0.75))
    assert (row.best_f1, row.best_f1_score) == (pytest.approx(0.75), 0.5)
    a = analyse(*THREE, ["c1"], [1], iou=0.5)
    assert a.score == 0.7 and a.overall["f1"] == pytest.approx(2 / 3)  # ties 4/6 at 0.7 is the highest
    given = analyse(*THREE, ["c1"], [1], iou=0.4, score=0.65)
    assert given.score_chosen_by == "given"
    assert (given.overall["precision"], given.overall["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_curves_on_the_score_grid() -> None:
    a = analyse(*THREE, ["c1"], [1], iou=0.4)
    curve = a.curves["c1"]
    assert curve.f1[50] == pytest.approx(0.75) and curve.f1[70] == pytest.approx(2 / 3)
    assert curve.recall[91] == 0.0 and curve.precision[91] is None  # nothing scores above 0.9
    assert curve.pr_precision[0] == pytest.approx(1.0) and len(curve.pr_precision) == 101
    assert a.curves["all"].f1 == curve.f1  # one class: pooled is the class


def test_confusion_matrix() -> None:
    """cat on a cat (true); dog on a cat (confused); cat on nothing (false); dog on a dog (true); a dog found only
    below the threshold (missed)."""
    gt, dets = image([(1, box(0)), (1, box(1)), (2, box(2)), (2, box(3))],
                     [(1, box(0), 0.9), (2, box(1), 0.8), (1, box(8), 0.7), (2, box(2), 0.6), (2, box(3), 0.2)])
    a = analyse(gt, dets, ["cat", "dog"], [1, 2], score=0.5)
    assert a.confusion.tolist() == [[1, 1, 0],  # cat: found, taken for a dog, missed
                                    [0, 1, 1],  # dog: taken for a cat, found, missed
                                    [1, 0, 0]]  # no object: false cat, false dog
    assert [(g.score, g.reason) for g in a.false_detections] == [(0.8, "classification"), (0.7, "background")]
    assert a.false_detections[0].other_label == 0 and a.false_detections[0].other_iou == 1.0
    assert [(g.label, g.box, g.other_box) for g in a.missed] == [(1, [90.0, 0.0, 110.0, 20.0], None)]


def test_the_largest_missed_objects_come_first_and_the_gallery_is_cut() -> None:
    sizes = [5.0, 40.0, 12.0, 30.0]
    gt, dets = image([(1, [100.0 * k, 0.0, s, s]) for k, s in enumerate(sizes)], [])
    a = analyse(gt, dets, ["c1", "c2"], [1, 2], gallery=3)
    assert [g.box[2] - g.box[0] for g in a.missed] == [40.0, 30.0, 12.0]
    assert a.score == 0.0 and a.overall["f1"] == 0.0 and a.overall["precision"] is None


@pytest.mark.parametrize(("seed", "order"), [(0, [0, 1, 2]), (1, [2, 0, 1])])
def test_coco_numbers_are_pycocotools_and_harnets_metrics(seed: int, order: list[int]) -> None:
    """Also with the classes in another order than their category ids (COCOeval sorts its ids)."""
    gt, dets = random_case(seed)
    cats = [CATEGORIES[k] for k in order]
    names = [f"c{c}" for c in cats]
    a = analyse(gt, dets, names, cats, iou=0.5)
    metrics = evaluate_coco(coco_from_dict(gt), dets, names, cats)
    assert a.coco == {k: (None if v < 0 else v) for k, v in metrics.stats.items()}
    for row in a.classes:
        assert row.coco["AP"] == pytest.approx(metrics.per_class_ap[row.name], abs=1e-12)
        assert row.ap_iou == pytest.approx(row.coco["AP50"], abs=1e-12)  # the numpy AP at IoU 0.5 is COCO's AP50
    assert a.tide.ap == pytest.approx(metrics.stats["AP50"], abs=1e-12)  # TIDE starts from COCO's AP50
    # the counts add up: every object is found, confused or missed; every detection true, confused or false
    k = len(names)
    assert a.confusion[:k].sum() == a.overall["num_gt"]
    assert a.confusion[:, :k].sum() == a.overall["num_detections"]
    assert np.trace(a.confusion[:k, :k]) == a.overall["true_positives"]
    body = json.dumps(a.to_dict(), allow_nan=False)
    assert json.loads(body)["coco"]["AP"] == metrics.stats["AP"]


def test_nothing_detected_and_bad_arguments() -> None:
    gt, _ = image([(1, box(0))], [])
    a = analyse(gt, [], ["c1", "c2"], [1, 2])
    assert a.coco["AP"] == 0.0 and a.classes[1].coco["AP"] is None and not a.false_detections
    assert math.isnan(a.tide.dap["missed"]) is False
    json.dumps(a.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="iou"):
        analyse(gt, [], ["c1"], [1], iou=0.0)
    with pytest.raises(ValueError, match="score"):
        analyse(gt, [], ["c1"], [1], score=1.5)
