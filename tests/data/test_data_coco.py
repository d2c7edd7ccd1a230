"""CocoDataset: sparse ids, crowd boxes, negatives, invalid boxes and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from harnet.data import CocoDataset, build_transforms


def _write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (10, 20, 30)).save(path)


def _dataset_dict() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 3, "file_name": "b.png", "width": 20, "height": 20},  # no annotations
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [30, 20, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 5, "bbox": [5, 5, 0, 4], "area": 0, "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 5, "bbox": [60, 60, 4, 4], "area": 16, "iscrowd": 0},
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 5, "name": "plane"},
        ],
    }


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    _write_image(tmp_path / "images" / "a.png", 40, 30)
    _write_image(tmp_path / "images" / "b.png", 20, 20)
    (tmp_path / "ann.json").write_text(json.dumps(_dataset_dict()))
    return tmp_path


def test_sparse_category_ids_map_to_contiguous_labels(coco_dir: Path) -> None:
    ds = CocoDataset(coco_dir / "images", coco_dir / "ann.json")
    assert ds.category_ids == [1, 5, 90]
    assert ds.class_names == ["person", "plane", "toothbrush"]
    assert [ds.category_ids[label] for label in range(3)] == [1, 5, 90]
    assert len(ds) == 2

    image, target = ds[1]  # sorted by image id: 3, 7
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert target["image_id"] == 7
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (30, 40)
    # xywh -> xyxy, clipped to the 40x30 image; crowd, empty and outside boxes removed.
    torch.testing.assert_close(
        boxes.as_subclass(torch.Tensor), torch.tensor([[1.0, 2, 11, 7], [30, 20, 40, 30]])
    )
    assert target["labels"].tolist() == [2, 0] and target["labels"].dtype == torch.int64
    assert ds.num_invalid_boxes == 2


def test_image_without_annotations_and_crowd_kept_in_coco(coco_dir: Path) -> None:
    ds = CocoDataset(coco_dir / "images", coco_dir / "ann.json")
    image, target = ds[0]
    assert target["image_id"] == 3 and image.shape == (3, 20, 20)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert sorted(ds.coco.getImgIds()) == [3, 7]
    crowd = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[7], iscrowd=True))
    assert [a["id"] for a in crowd if a["iscrowd"]] == [3]


def test_transforms_are_applied(coco_dir: Path) -> None:
    ds = CocoDataset(coco_dir / "images", coco_dir / "ann.json", transforms=build_transforms(train=False))
    image, target = ds[1]
    assert image.shape == (3, 30, 40) and target["boxes"].shape == (2, 4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "malformed JSON"),
        ("[]", "top level"),
        (
            json.dumps({"images": [], "categories": [{"id": 1}], "annotations": [{"image_id": 9}]}),
            "unknown image_id",
        ),
        (
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
                    "categories": [{"id": 1}],
                    "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}],
                }
            ),
            "bbox",
        ),
    ],
)
def test_malformed_annotations_raise_value_error_naming_file(
    tmp_path: Path, content: str, message: str
) -> None:
    ann = tmp_path / "broken.json"
    ann.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        CocoDataset(tmp_path, ann)
    assert "broken.json" in str(info.value) and "\n" not in str(info.value)


def test_missing_image_raises_file_not_found_naming_file(coco_dir: Path) -> None:
    (coco_dir / "images" / "a.png").unlink()
    ds = CocoDataset(coco_dir / "images", coco_dir / "ann.json")
    with pytest.raises(FileNotFoundError, match=r"a\.png"):
        ds[1]


def test_missing_optional_fields_are_filled(tmp_path: Path) -> None:
    _write_image(tmp_path / "a.png", 10, 10)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [{"image_id": 1, "category_id": 4, "bbox": [1, 1, 2, 3]}],
        "categories": [{"id": 4, "name": "x"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path, tmp_path / "ann.json")
    ann = ds.coco.loadAnns(ds.coco.getAnnIds())[0]
    assert ann["area"] == 6 and ann["iscrowd"] == 0 and isinstance(ann["id"], int)
    np.testing.assert_allclose(ds[0][1]["boxes"].numpy(), [[1, 1, 3, 4]])
