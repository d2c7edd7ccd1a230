"""COCO-format detection dataset (``instances_*.json`` + an image folder)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from harnet.data.records import DetectionRecord, RecordDataset, Transform, clip_valid_boxes, coco_from_dict


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco_json(ann_file: str | Path) -> dict[str, Any]:
    """Read and validate a COCO instances file, filling the optional fields COCOeval relies on.

    pycocotools itself fails with a bare ``KeyError``/``JSONDecodeError`` far from the cause; here every
    problem is a one-line ``ValueError`` naming the file, so a broken annotation file is fixed in
    seconds. Missing ``annotations`` (test-set image lists), annotation ``id``, ``area`` (= w*h) and
    ``iscrowd`` (= 0) are filled in.
    """
    ann_file = Path(ann_file)

    def fail(problem: str) -> ValueError:
        return ValueError(f"{ann_file}: {problem}")

    try:
        data = json.loads(ann_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise fail(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    if not isinstance(data, dict):
        raise fail(f"top level must be a JSON object, got {type(data).__name__}")
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise fail(f"'{key}' must be a list")

    image_ids: set[int] = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise fail(f"images[{i}] needs an integer 'id'")
        if not isinstance(image.get("file_name"), str):
            raise fail(f"images[{i}] (id {image['id']}) needs a string 'file_name'")
        for key in ("width", "height"):
            if not _is_int(image.get(key)) or image[key] <= 0:
                raise fail(f"images[{i}] (id {image['id']}) needs a positive integer '{key}'")
        if image["id"] in image_ids:
            raise fail(f"duplicate image id {image['id']}")
        image_ids.add(image["id"])

    category_ids: set[int] = set()
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise fail(f"categories[{i}] needs an integer 'id'")
        if category["id"] in category_ids:
            raise fail(f"duplicate category id {category['id']}")
        category_ids.add(category["id"])
        category.setdefault("name", str(category["id"]))

    ann_ids = [a["id"] for a in data["annotations"] if isinstance(a, dict) and "id" in a]
    if len(ann_ids) != len(set(ann_ids)):
        raise fail("duplicate annotation ids")
    next_id = max((i for i in ann_ids if _is_int(i)), default=0) + 1
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise fail(f"annotations[{i}] must be an object")
        if ann.get("image_id") not in image_ids:
            raise fail(f"annotations[{i}] refers to unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in category_ids:
            raise fail(f"annotations[{i}] refers to unknown category_id {ann.get('category_id')!r}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise fail(f"annotations[{i}] needs 'bbox' as 4 numbers [x, y, w, h], got {bbox!r}")
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3] if math.isfinite(bbox[2] * bbox[3]) else 0.0)
    return data


class CocoDataset(RecordDataset):
    """Images of a COCO instances file, with sparse category ids mapped to contiguous labels.

    Sorted category ids become labels ``0..K-1`` (``category_ids[label]`` maps back for result files).
    ``iscrowd=1`` boxes are not training targets but stay in ``coco`` so COCOeval ignores detections on
    them as usual. Non-finite or empty boxes are dropped and boxes are clipped to the image; the number
    dropped is ``num_invalid_boxes``. Images without annotations are kept (negatives).
    """

    def __init__(
        self, image_dir: str | Path, ann_file: str | Path, transforms: Transform | None = None
    ) -> None:
        image_dir = Path(image_dir)
        data = load_coco_json(ann_file)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        category_ids = [c["id"] for c in categories]
        label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}

        annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            if not ann["iscrowd"]:
                annotations[ann["image_id"]].append(ann)

        records: list[DetectionRecord] = []
        num_invalid = 0
        for image in sorted(data["images"], key=lambda im: im["id"]):
            anns = annotations[image["id"]]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            boxes, keep = clip_valid_boxes(xyxy, image["width"], image["height"])
            labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
            num_invalid += int((~keep).sum())
            records.append(
                DetectionRecord(
                    path=image_dir / image["file_name"],
                    width=image["width"],
                    height=image["height"],
                    image_id=image["id"],
                    boxes=boxes[keep],
                    labels=labels[keep],
                )
            )
        super().__init__(
            records,
            class_names=[str(c["name"]) for c in categories],
            category_ids=category_ids,
            coco=coco_from_dict(data),
            transforms=transforms,
            num_invalid_boxes=num_invalid,
        )
