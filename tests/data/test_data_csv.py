"""CsvDataset: optional header, negatives, relative paths, and errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from harnet.data import CsvDataset


@pytest.fixture
def images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, size in (("a.png", (40, 30)), ("b.png", (20, 20)), ("c.png", (16, 16))):
        Image.new("RGB", size).save(tmp_path / "img" / name)
    return tmp_path


@pytest.mark.parametrize("header", [True, False])
def test_rows_with_and_without_header(images: Path, header: bool) -> None:
    rows = ["img/b.png,1,2,3,4,dog", "img/a.png,5,5,45,20,cat", "img/c.png,,,,,", "img/b.png,0,0,9,9,cat", ""]
    text = ("image_path,xmin,ymin,xmax,ymax,label\n" if header else "") + "\n".join(rows)
    (images / "ann.csv").write_text(text)
    ds = CsvDataset(images / "ann.csv")
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    assert len(ds) == 3
    image, target = ds[0]  # first appearance: b.png
    assert target["image_id"] == 1 and image.shape == (3, 20, 20)
    assert target["labels"].tolist() == [1, 0]
    assert target["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 9.0, 9.0]]
    torch.testing.assert_close(ds[1][1]["boxes"].as_subclass(torch.Tensor), torch.tensor([[5.0, 5, 40, 20]]))
    _, empty = ds[2]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    assert sorted(ds.coco.getImgIds()) == [1, 2, 3] and len(ds.coco.getAnnIds()) == 3


def test_image_root_and_invalid_boxes(images: Path, tmp_path: Path) -> None:
    (tmp_path / "ann.csv").write_text("a.png,5,5,2,9,cat\na.png,1,1,4,4,cat\n")
    ds = CsvDataset(tmp_path / "ann.csv", image_root=images / "img", class_names=["cat", "dog"])
    assert ds.num_invalid_boxes == 1 and ds[0][1]["boxes"].shape == (1, 4)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("img/a.png,1,2,3,cat", "expected 6 fields"),
        ("img/a.png,1,2,x,4,cat", "xmax must be a number"),
        ("img/a.png,1,2,,4,cat", "all filled or all empty"),
        ("img/a.png,1,2,3,4,", "all filled or all empty"),
        ("img/a.png,1,2,3,4,bird", "not in class_names"),
    ],
)
def test_bad_line_names_file_and_line(images: Path, line: str, message: str) -> None:
    (images / "bad.csv").write_text(f"image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,2,3,4,cat\n{line}\n")
    with pytest.raises(ValueError, match=message) as info:
        CsvDataset(images / "bad.csv", class_names=["cat"])
    assert "bad.csv:3:" in str(info.value)


def test_missing_image_names_file_and_line(images: Path) -> None:
    (images / "ann.csv").write_text("img/a.png,1,2,3,4,cat\nimg/zzz.png,1,2,3,4,cat\n")
    with pytest.raises(FileNotFoundError, match=r"ann\.csv:2: image file not found: .*zzz\.png"):
        CsvDataset(images / "ann.csv")
