"""Writing generated or converted datasets to disk in the COCO layout the trainer reads.

Both the synthetic shapes and the converted tree crowns end up as
``out_dir/{train,val}/*.png`` + ``out_dir/annotations/instances_{train,val}.json``, so that
:class:`~harnet.data.coco.CocoDataset` and COCOeval consume them like any other COCO dataset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

# One split being built: (COCO image entries, COCO annotation entries).
Split = tuple[list[dict[str, Any]], list[dict[str, Any]]]

# Decimals kept for box coordinates: far below a pixel, and it keeps the JSON free of float noise.
_DECIMALS = 3


class GeneratedDataset(TypedDict):
    """Where a generated dataset was written, and what it contains."""

    root: Path
    train_images: Path
    val_images: Path
    train_ann: Path
    val_ann: Path
    num_train: int
    num_val: int
    num_train_boxes: int
    num_val_boxes: int
    class_names: list[str]


def coco_annotation(ann_id: int, image_id: int, category_id: int, xyxy: Sequence[float]) -> dict[str, Any]:
    """A COCO annotation for an axis-aligned box (``iscrowd`` 0, ``area`` = box area)."""
    x0, y0, x1, y1 = (round(float(v), _DECIMALS) for v in xyxy)
    w, h = round(x1 - x0, _DECIMALS), round(y1 - y0, _DECIMALS)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [x0, y0, w, h],
        "area": round(w * h, _DECIMALS),
        "iscrowd": 0,
    }


def write_coco_json(
    path: Path,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    description: str,
) -> None:
    """Write one split's instances file. No dates or versions go in, so the bytes depend only on content."""
    data = {
        "info": {"description": description},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def dataset_paths(out_dir: Path) -> tuple[Path, Path, Path, Path]:
    """``(train_images, val_images, train_ann, val_ann)`` under ``out_dir``, image folders created."""
    train_images, val_images = out_dir / "train", out_dir / "val"
    train_images.mkdir(parents=True, exist_ok=True)
    val_images.mkdir(parents=True, exist_ok=True)
    annotations = out_dir / "annotations"
    return train_images, val_images, annotations / "instances_train.json", annotations / "instances_val.json"


def write_splits(
    out_dir: Path, splits: dict[str, Split], categories: list[dict[str, Any]], description: str
) -> GeneratedDataset:
    """Write both splits' instances files (``description`` + ", split=NAME") and summarise them."""
    train_images, val_images, train_ann, val_ann = dataset_paths(out_dir)
    for split, path in (("train", train_ann), ("val", val_ann)):
        write_coco_json(path, *splits[split], categories, f"{description}, split={split}")
    return GeneratedDataset(
        root=out_dir,
        train_images=train_images,
        val_images=val_images,
        train_ann=train_ann,
        val_ann=val_ann,
        num_train=len(splits["train"][0]),
        num_val=len(splits["val"][0]),
        num_train_boxes=len(splits["train"][1]),
        num_val_boxes=len(splits["val"][1]),
        class_names=[c["name"] for c in categories],
    )
