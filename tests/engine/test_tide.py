"""TIDE's error types, each in a hand-made case whose dAP is worked out by hand.

AP here is COCO's: the precision envelope sampled at the 101 recall points 0, 0.01, ..., 1. With two
objects, a true positive, then a false one, then a true one, the envelope is 1 up to recall 0.5 (51
points) and 2/3 after (50 points): AP = (51 + 50 * 2/3) / 101. One true positive, a false one above it:
precision 1/2 everywhere, AP 1/2."""

from __future__ import annotations

from typing import Any

import pytest

from harnet.engine.box_matching import group_by_image, match
from harnet.engine.tide import ERROR_TYPES, classify_errors, tide

A = [0.0, 0.0, 10.0, 10.0]  # XYWH
B = [50.0, 50.0, 10.0, 10.0]
TP_FP_TP = (51 + 50 * 2 / 3) / 101


def case(objects: list[tuple[int, list[float]]], detections: list[tuple[int, list[float], float]],
         classes: int = 1) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """One image; (category, box) objects and (category, box, score) detections; categories 1..classes."""
    gt = {"images": [{"id": 1, "file_name": "a.png"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (c, b) in enumerate(objects)],
          "categories": [{"id": c + 1, "name": f"c{c + 1}"} for c in range(classes)]}
    dets = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in detections]
    return gt, dets, list(range(1, classes + 1))


def run(gt: dict[str, Any], dets: list[dict[str, Any]], cats: list[int]) -> Any:
    return tide(group_by_image(gt, dets, cats), [f"c{c}" for c in cats])


def only(result: Any, kind: str, count: int = 1, missed: int = 0) -> None:
    expected = {t: 0 for t in ERROR_TYPES} | {kind: count, "missed": missed}
    assert result.counts == expected


def shifted(box: list[float], dx: float) -> list[float]:
    return [box[0] + dx, *box[1:]]


def test_background_error() -> None:
    result = run(*case([(1, A), (1, B)], [(1, A, 0.9), (1, [200, 200, 10, 10], 0.8), (1, B, 0.7)]))
    only(result, "background")
    assert result.ap == pytest.approx(TP_FP_TP, abs=1e-12)
    assert result.dap["background"] == pytest.approx(1 - TP_FP_TP, abs=1e-12)
    assert result.dap_false_positives == pytest.approx(1 - TP_FP_TP, abs=1e-12)
    assert sum(result.dap.values()) == pytest.approx(result.dap["background"], abs=1e-12)


def test_localisation_error_becomes_a_true_positive() -> None:
    # 10x10 box moved 6 px: IoU 40/160 = 0.25, in [0.1, 0.5]
    result = run(*case([(1, A), (1, B)], [(1, shifted(A, 6), 0.9), (1, B, 0.8)]))
    only(result, "localisation")  # A is not missed: a localisation error is about it
    assert result.ap == pytest.approx(0.5 * 51 / 101, abs=1e-12)
    assert result.dap["localisation"] == pytest.approx(1 - 0.5 * 51 / 101, abs=1e-12)


def test_classification_error_moves_to_the_right_class() -> None:
    # class 1 has A and no detection (AP 0); class 2 has B, a false positive above its true one (AP 1/2)
    result = run(*case([(1, A), (2, B)], [(2, A, 0.9), (2, B, 0.8)], classes=2))
    only(result, "classification")
    assert result.ap == pytest.approx(0.25, abs=1e-12)
    assert result.dap["classification"] == pytest.approx(0.75, abs=1e-12)  # both classes perfect
    assert result.per_class_counts["c2"]["classification"] == 1  # counted in the detected class


def test_duplicate_error() -> None:
    result = run(*case([(1, A), (1, B)], [(1, A, 0.9), (1, shifted(A, 0.5), 0.8), (1, B, 0.7)]))
    only(result, "duplicate")
    assert result.dap["duplicate"] == pytest.approx(1 - TP_FP_TP, abs=1e-12)


def test_both_error_is_removed_and_its_object_missed() -> None:
    # a class-2 detection 6 px off a class-1 object: wrong class and IoU 0.25
    result = run(*case([(1, A), (2, B)], [(2, shifted(A, 6), 0.9), (2, B, 0.8)], classes=2))
    only(result, "both", missed=1)
    assert result.ap == pytest.approx(0.25, abs=1e-12)
    assert result.dap["both"] == pytest.approx(0.25, abs=1e-12)  # class 2 becomes perfect
    # class 1's only object taken out of the count leaves it none: AP 0 by TIDE's rule, nothing gained
    assert result.dap["missed"] == 0.0


def test_missed_error() -> None:
    result = run(*case([(1, A), (1, B)], [(1, A, 0.9)]))
    only(result, "missed", 0, missed=1)
    assert result.ap == pytest.approx(51 / 101, abs=1e-12)
    assert result.dap["missed"] == pytest.approx(50 / 101, abs=1e-12)
    assert result.dap_false_negatives == pytest.approx(50 / 101, abs=1e-12)


def test_one_fix_per_object_the_best_scoring_error() -> None:
    """Two localisation errors about one object: the oracle makes the better one true and removes the other."""
    result = run(*case([(1, A)], [(1, shifted(A, 6), 0.9), (1, shifted(A, -6), 0.8)]))
    only(result, "localisation", 2)
    assert result.ap == 0.0
    assert result.dap["localisation"] == pytest.approx(1.0, abs=1e-12)


def test_an_image_without_objects_has_only_background_errors() -> None:
    gt, dets, cats = case([], [(1, A, 0.9), (1, B, 0.5)])
    gt["images"].append({"id": 2, "file_name": "b.png"})
    gt["annotations"].append({"id": 9, "image_id": 2, "category_id": 1, "bbox": A, "area": 100, "iscrowd": 0})
    images = group_by_image(gt, dets, cats)
    types = classify_errors(images, match(images, 0.5))
    assert types.counts() == {t: 0 for t in ERROR_TYPES} | {"background": 2, "missed": 1}
