"""write_dataset: a dataset written as COCO, Label Studio, CVAT and YOLO reads back with every box within 0.01 px."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from harnet.config.experiment import DataConfig
from harnet.data.build import build_dataset
from harnet.data.coco import CocoDataset
from harnet.data.convert import write_dataset
from harnet.data.csv_dataset import CsvDataset
from harnet.data.cvat import CvatDataset
from harnet.data.records import RecordDataset

# Every coordinate survives to 0.01 px: COCO and CVAT keep 3 decimals (5e-4 px), Label Studio full floats, YOLO
# 8 significant digits of a fraction of at most 1 (5e-9 of the image side); records hold float32 (ulp 6e-5 px at
# 1000 px).
TOLERANCE = 0.01
FILES = {"coco": "coco.json", "labelstudio": "ls.json", "cvat": "cvat.xml", "yolo": "yolo"}


@pytest.fixture
def source(tmp_path: Path) -> CsvDataset:
    """Three images of odd sizes in a folder with a subfolder; boxes at arbitrary sub-pixel positions; a background
    image; a box touching the image border."""
    img = tmp_path / "img"
    (img / "sub").mkdir(parents=True)
    Image.new("RGB", (997, 661)).save(img / "a.png")
    Image.new("RGB", (37, 53)).save(img / "sub" / "b.jpg")
    Image.new("RGB", (20, 20)).save(img / "c.png")
    rows = ["a.png,12.3456,7.8912,300.5001,470.2533,cat", "a.png,0.001,0,996.999,661,dog",
            "a.png,500.1234,600.9876,500.4567,601.2345,cat", "sub/b.jpg,1.5,2.5,36.9,52.9,dog", "c.png,,,,,"]
    (tmp_path / "ann.csv").write_text("\n".join(rows) + "\n")
    return CsvDataset(tmp_path / "ann.csv", image_root=img, class_names=["cat", "dog", "bird"])


def _config(fmt: str, written: Path, images: Path) -> DataConfig:
    return DataConfig(format=fmt, val_annotations=str(written), val_images=str(images))  # type: ignore[arg-type]


def _same(a: RecordDataset, b: RecordDataset) -> None:
    assert b.class_names == a.class_names and len(b) == len(a)
    # YOLO lists a folder's images sorted by path: match the images by file
    by_file = {rb.path.resolve(): rb for rb in b.records}
    for ra in a.records:
        rb = by_file[ra.path.resolve()]
        assert (rb.width, rb.height) == (ra.width, ra.height)
        assert rb.labels.tolist() == ra.labels.tolist()
        torch.testing.assert_close(rb.boxes, ra.boxes, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("fmt", list(FILES))
def test_round_trip_keeps_every_box(source: CsvDataset, tmp_path: Path, fmt: str) -> None:
    written = write_dataset(source, fmt, tmp_path / "out" / FILES[fmt])
    back = build_dataset(_config(fmt, written, tmp_path / "img"), "val", class_names=source.class_names)
    _same(source, back)
    if fmt == "coco":
        assert back.category_ids == source.category_ids


def test_yolo_images_are_linked_under_images(source: CsvDataset, tmp_path: Path) -> None:
    data = write_dataset(source, "yolo", tmp_path / "yolo")
    assert (tmp_path / "yolo" / "images" / "sub" / "b.jpg").resolve() == (tmp_path / "img" / "sub" / "b.jpg").resolve()
    assert (tmp_path / "yolo" / "labels" / "c.txt").read_text() == ""  # seen, nothing in it
    assert (tmp_path / "yolo" / "classes.txt").read_text() == "cat\ndog\nbird\n"
    assert data == tmp_path / "yolo" / "data.yaml"


def test_cvat_keeps_occluded_and_z_order(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "in.xml").write_text(
        '<annotations><image id="0" name="a.png" width="40" height="30">'
        '<box label="cat" occluded="1" xtl="1" ytl="2" xbr="10" ybr="12" z_order="4"/></image></annotations>')
    first = CvatDataset(tmp_path / "in.xml", tmp_path)
    again = CvatDataset(write_dataset(first, "cvat", tmp_path / "out.xml"), tmp_path)
    assert again.box_attributes == first.box_attributes == {1: [{"occluded": True, "z_order": 4}]}


def _ap(dataset: RecordDataset, detections: dict[str, list[tuple[list[float], int, float]]]) -> float:
    """COCO AP of ``detections`` (by image file: XYXY box, label, score) against ``dataset``'s ground truth."""
    results = []
    for record in dataset.records:
        for (x0, y0, x1, y1), label, score in detections[record.path.resolve().name]:
            results.append({"image_id": record.image_id, "category_id": dataset.category_ids[label],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_same_ap_in_every_format(shapes_root: Path, tmp_path: Path) -> None:
    """The shapes val set written as YOLO, Label Studio and CVAT scores a detector exactly as its COCO file does
    (the ground truth's boxes moved by a few pixels, with random scores, stand in for a detector's)."""
    coco = CocoDataset(shapes_root / "val", shapes_root / "annotations" / "instances_val.json")
    rng = np.random.default_rng(0)
    detections = {r.path.name: [((box + torch.from_numpy(rng.uniform(-3, 3, 4))).tolist(), label, float(rng.random()))
                                for box, label in zip(r.boxes.double(), r.labels.tolist(), strict=True)]
                  for r in coco.records}
    expected = _ap(coco, detections)
    assert 0.1 < expected < 0.99
    for fmt in ("yolo", "labelstudio", "cvat"):
        written = write_dataset(coco, fmt, tmp_path / FILES[fmt])
        again = build_dataset(_config(fmt, written, shapes_root / "val"), "val", class_names=coco.class_names)
        assert _ap(again, detections) == pytest.approx(expected, abs=1e-4), fmt
