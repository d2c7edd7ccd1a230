"""VOCDataset: devkit and flat layouts, difficult objects, splits, parse errors, COCOeval on its GT."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.cocoeval import COCOeval

from harnet.data import VOCDataset


def _xml(
    filename: str | None, objects: list[tuple[str, tuple[int, int, int, int], int]], size=(40, 30)
) -> str:
    parts = ["<annotation>"]
    if filename is not None:
        parts.append(f"<filename>{filename}</filename>")
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, (x0, y0, x1, y1), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def _make(folder: Path, image_folder: Path, stem: str, objects, filename: str | None = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image_folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30)).save(image_folder / f"{stem}.jpg")
    name = f"{stem}.jpg" if filename == "" else filename
    (folder / f"{stem}.xml").write_text(_xml(name, objects))


def _devkit(root: Path) -> Path:
    _make(
        root / "Annotations",
        root / "JPEGImages",
        "002",
        [("dog", (11, 6, 30, 20), 0), ("cat", (1, 1, 5, 5), 1)],
    )
    _make(root / "Annotations", root / "JPEGImages", "001", [("cat", (1, 1, 10, 10), 0)])
    _make(root / "Annotations", root / "JPEGImages", "003", [])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("003\n002\n")
    return root


def test_devkit_layout_with_difficult_objects(tmp_path: Path) -> None:
    ds = VOCDataset(_devkit(tmp_path))
    assert len(ds) == 3 and ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    image, target = ds[1]  # 002.xml: ids follow sorted file names
    assert target["image_id"] == 2 and image.shape == (3, 30, 40)
    # 1-based VOC pixel indices become 0-based corners; the difficult cat is not a training target.
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 5, 30, 20]]))
    assert target["labels"].tolist() == [1]
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=[2]))
    assert sorted((a["category_id"], a["iscrowd"]) for a in anns) == [(1, 1), (2, 0)]
    assert ds[2][1]["boxes"].shape == (0, 4)
    assert sorted(ds.coco.getImgIds()) == [1, 2, 3]


def test_split_file_and_zero_based_option(tmp_path: Path) -> None:
    ds = VOCDataset(_devkit(tmp_path), split="val", one_based=False)
    assert [r.path.name for r in ds.records] == ["002.jpg", "003.jpg"]
    assert ds[0][1]["boxes"].tolist() == [[11.0, 6.0, 30.0, 20.0]]
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        VOCDataset(tmp_path, split="train")


def test_flat_layout_resolves_images_by_filename_or_stem(tmp_path: Path) -> None:
    _make(tmp_path, tmp_path, "a", [("tree", (2, 2, 8, 8), 0)])
    _make(tmp_path, tmp_path, "b", [("tree", (3, 3, 9, 9), 0)], filename=None)  # no <filename>
    ds = VOCDataset(tmp_path, class_names=["bush", "tree"])
    assert [r.path.name for r in ds.records] == ["a.jpg", "b.jpg"]
    assert ds.class_names == ["bush", "tree"] and ds[1][1]["labels"].tolist() == [1]


def test_unknown_class_and_parse_errors_name_the_file(tmp_path: Path) -> None:
    _make(tmp_path, tmp_path, "a", [("tree", (2, 2, 8, 8), 0)])
    with pytest.raises(ValueError, match=r"a\.xml.*'tree'"):
        VOCDataset(tmp_path, class_names=["bush"])
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"bad\.xml: malformed XML"):
        VOCDataset(tmp_path)
    (tmp_path / "bad.xml").write_text(
        _xml("a.jpg", [("tree", (2, 2, 8, 8), 0)]).replace("<xmax>8", "<xmax>x8")
    )
    with pytest.raises(ValueError, match=r"bad\.xml: object 0 \(tree\): <xmax>"):
        VOCDataset(tmp_path)


def test_cocoeval_ignores_detections_on_difficult_objects(tmp_path: Path) -> None:
    ds = VOCDataset(_devkit(tmp_path))
    detections = []
    for index in range(len(ds)):
        _, target = ds[index]
        for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            detections.append(
                {
                    "image_id": target["image_id"],
                    "category_id": ds.category_ids[label],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": 0.9,
                }
            )
    # A confident detection on the difficult cat must not count as a false positive.
    detections.append({"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.99})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(ds.coco, ds.coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)
