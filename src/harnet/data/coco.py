"""COCO-format detection dataset (``instances_*.json`` + an image folder)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harnet.config.io import ConfigError
from harnet.data.issues import SKIPPED_ANNOTATION, BadDataError, IssueLog, read_json
from harnet.data.records import (
    DetectionRecord,
    RecordDataset,
    Transform,
    coco_from_dict,
    finite_box,
    keep_valid_boxes,
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco_json(ann_file: str | Path, issues: IssueLog | None = None) -> dict[str, Any]:
    """Read and validate a COCO instances file, filling the optional fields COCOeval relies on.

    pycocotools itself fails with a bare ``KeyError``/``JSONDecodeError`` far from the cause; here every
    problem is a one-line ``ValueError`` naming the file, so a broken annotation file is fixed in
    seconds. Missing ``annotations`` (test-set image lists), annotation ``id``, ``area`` (= w*h) and
    ``iscrowd`` (= 0) are filled in.

    Problems with one entry go to ``issues`` (see :mod:`harnet.data.issues`): an image entry without
    a valid id/file_name/size, or an annotation with an unknown category or a bbox that is not four
    finite numbers, skips that image; an annotation of an unknown image is skipped alone. The returned
    dict no longer holds skipped entries. Problems with the file as a whole are always errors.
    """
    ann_file = Path(ann_file)
    log = issues if issues is not None else IssueLog()

    def fail(problem: str) -> BadDataError:
        return BadDataError(f"{ann_file}: {problem}")

    data = read_json(ann_file)
    if not isinstance(data, dict):
        raise fail(f"top level must be a JSON object, got {type(data).__name__}")
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise fail(f"'{key}' must be a list")

    category_ids: set[int] = set()
    for i, category in enumerate(data["categories"]):
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise fail(f"categories[{i}] needs an integer 'id'")
        if category["id"] in category_ids:
            raise fail(f"duplicate category id {category['id']}")
        category_ids.add(category["id"])
        category.setdefault("name", str(category["id"]))

    images: dict[int, dict[str, Any]] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            log.bad(ann_file, f"images[{i}] needs an integer 'id'")
            continue
        if image["id"] in images:
            raise fail(f"duplicate image id {image['id']}")
        problem = None
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            problem = "needs a string 'file_name'"
        for key in ("width", "height"):
            if not _is_int(image.get(key)) or image[key] <= 0:
                problem = problem or f"needs a positive integer '{key}', got {image.get(key)!r}"
        if problem is not None:
            log.bad(ann_file, f"images[{i}] (id {image['id']}) {problem}")
            continue
        images[image["id"]] = image

    ann_ids = [a["id"] for a in data["annotations"] if isinstance(a, dict) and _is_int(a.get("id"))]
    if len(ann_ids) != len(set(ann_ids)):
        raise fail("duplicate annotation ids")
    next_id = max((i for i in ann_ids if _is_int(i)), default=0) + 1
    annotations: list[dict[str, Any]] = []
    bad_images: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            log.bad(ann_file, f"annotations[{i}] must be an object", SKIPPED_ANNOTATION)
            continue
        image_id = ann.get("image_id")
        image = images.get(image_id) if _is_int(image_id) else None  # type: ignore[arg-type]
        if image is None:
            log.bad(ann_file, f"annotations[{i}] refers to unknown image_id {ann.get('image_id')!r}",
                    SKIPPED_ANNOTATION)
            continue
        where = f"annotations[{i}] (image {image['file_name']})"
        bbox = ann.get("bbox")
        problem = None
        if "id" in ann and not _is_int(ann["id"]):
            problem = f"has a non-integer 'id' {ann['id']!r}"
        elif not _is_int(ann.get("category_id")) or ann["category_id"] not in category_ids:
            problem = f"refers to unknown category_id {ann.get('category_id')!r}"
        elif not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problem = f"needs 'bbox' as 4 numbers [x, y, w, h], got {bbox!r}"
        elif not finite_box(bbox):
            problem = f"has a non-finite bbox {bbox!r}"
        if problem is not None:
            log.bad(ann_file, f"{where} {problem}")
            bad_images.add(image["id"])
            continue
        if "id" not in ann:
            ann["id"] = next_id
            next_id += 1
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", bbox[2] * bbox[3])  # type: ignore[index]
        annotations.append(ann)
    data["images"] = [im for im in images.values() if im["id"] not in bad_images]
    data["annotations"] = [a for a in annotations if a["image_id"] not in bad_images]
    return data


def match_categories(categories: list[dict[str, Any]], class_names: Sequence[str], ann_file: str | Path,
                     classes_from: str) -> list[dict[str, Any]]:
    """``categories`` (sorted by id) reordered so that entry ``i`` is the model's class ``class_names[i]``.

    A validation file read with its own category list would give label ``i`` to its own ``i``-th category:
    if it numbers or orders the classes differently from the training file, every detection would be
    scored against the wrong class, a wrong AP without a word. So categories are matched by name (their
    ids stay the file's own, which is what COCOeval compares with), and names that cannot be matched
    (missing, extra, renamed or repeated) are a one-line error naming both files and the first difference.
    """
    names = [str(c["name"]) for c in categories]
    wanted = [str(n) for n in class_names]
    if names == wanted:
        return categories
    by_name = {str(c["name"]): c for c in categories}
    if len(by_name) == len(names) and len(set(wanted)) == len(wanted) and set(by_name) == set(wanted):
        return [by_name[n] for n in wanted]
    repeated = next((n for n in wanted if wanted.count(n) > 1), None) or next(
        (n for n in names if names.count(n) > 1), None)
    missing = next((n for n in wanted if n not in by_name), None)
    extra = next((n for n in names if n not in wanted), None)
    if missing is not None:
        first = f"class {missing!r} is not among its categories"
    elif extra is not None:
        first = f"its category {extra!r} is not a class there"
    else:
        first = f"the class name {repeated!r} appears more than once, so names cannot be matched"
    raise ConfigError(f"{ann_file}: categories {names} do not match the classes {wanted} of {classes_from}: {first}")


class CocoDataset(RecordDataset):
    """Images of a COCO instances file, with sparse category ids mapped to contiguous labels.

    Sorted category ids become labels ``0..K-1`` (``category_ids[label]`` maps back for result files); given
    ``class_names`` (the model's classes, read from ``classes_from``), label ``i`` is the category named
    ``class_names[i]`` instead, whatever its id and position here (see :func:`match_categories`).
    ``iscrowd=1`` boxes are not training targets but stay in ``coco`` so COCOeval ignores detections on
    them as usual. Empty boxes or boxes outside the image are dropped (listed in ``issues``, counted in
    ``num_invalid_boxes``) and boxes are clipped to the image. Images without annotations are kept
    (negatives). Broken entries raise, or with ``skip_bad`` skip their image (see :func:`load_coco_json`).
    """

    def __init__(
        self, image_dir: str | Path, ann_file: str | Path, transforms: Transform | None = None,
        *, skip_bad: bool = False, class_names: Sequence[str] | None = None, classes_from: str = "the training set",
    ) -> None:
        image_dir = Path(image_dir)
        log = IssueLog(skip_bad)
        data = load_coco_json(ann_file, log)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        if class_names is not None:
            categories = match_categories(categories, class_names, ann_file, classes_from)
        category_ids = [c["id"] for c in categories]
        label_of = {cat_id: label for label, cat_id in enumerate(category_ids)}

        annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            if not ann["iscrowd"]:
                annotations[ann["image_id"]].append(ann)

        records: list[DetectionRecord] = []
        for image in sorted(data["images"], key=lambda im: im["id"]):
            anns = annotations[image["id"]]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
            xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
            labels = torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)
            sources = [(str(ann_file), f"annotation id {a['id']} (image {image['file_name']}, bbox {a['bbox']})")
                       for a in anns]
            boxes, labels = keep_valid_boxes(xyxy, labels, image["width"], image["height"], log, sources)
            records.append(
                DetectionRecord(
                    path=image_dir / image["file_name"],
                    width=image["width"],
                    height=image["height"],
                    image_id=image["id"],
                    boxes=boxes,
                    labels=labels,
                )
            )
        super().__init__(
            records,
            class_names=[str(c["name"]) for c in categories],
            category_ids=category_ids,
            coco=coco_from_dict(data),
            transforms=transforms,
            issues=log,
        )
