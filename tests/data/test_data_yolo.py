"""YoloDataset: the Ultralytics layout, polygons and confidences, background images, and bad data named by file:line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from harnet.data.issues import BadDataError
from harnet.data.yolo import YoloDataset, label_path


def _image(path: Path, size: tuple[int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)
    return path


def _dataset(root: Path, labels: dict[str, str], names: str = "[cat, dog]", extra: str = "") -> Path:
    """images/val/{a.png 40x30, b.png 20x20}; ``labels`` maps an image stem to its label text (no entry: no file)."""
    _image(root / "images" / "val" / "a.png", (40, 30))
    _image(root / "images" / "val" / "b.png", (20, 20))
    for stem, text in labels.items():
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"train: images/val\nval: images/val\nnames: {names}\n{extra}")
    return root / "data.yaml"


def test_boxes_polygons_confidences_and_background(tmp_path: Path) -> None:
    text = "0 0.5 0.5 0.5 0.2\n\n1 0.1 0.1 0.3 0.1 0.2 0.5\n1 0.5 0.5 0.25 0.5 0.9\n"
    ds = YoloDataset(_dataset(tmp_path, {"a": text}), "val")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2
    boxes = ds.records[0].boxes
    # box: cx 20 cy 15 w 20 h 6; polygon: its extent; a sixth value (confidence) ignored
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 12, 30, 18], [4, 3, 12, 15], [15, 7.5, 25, 22.5]]))
    assert ds.records[0].labels.tolist() == [0, 1, 1]
    image, target = ds[1]  # b.png has no label file: a background image
    assert image.shape == (3, 20, 20) and target["boxes"].shape == (0, 4) and target["image_id"] == 2


def test_names_mapping_and_model_classes_by_name(tmp_path: Path) -> None:
    data = _dataset(tmp_path, {"a": "3 0.5 0.5 0.5 0.5\n"}, names="{0: cat, 3: dog}")
    assert YoloDataset(data).class_names == ["cat", "dog"]
    ds = YoloDataset(data, class_names=["dog", "bird", "cat"])
    assert ds.records[0].labels.tolist() == [0] and ds.category_ids == [1, 2, 3]


def test_image_list_with_path_and_missing_image(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _dataset(root, {"a": "0 0.5 0.5 0.5 0.5\n"})
    (root / "val.txt").write_text("./images/val/a.png\nimages/val/gone.png\n")
    data = tmp_path / "data.yaml"
    data.write_text("path: set\nval: val.txt\nnames: [cat, dog]\n")
    with pytest.raises(FileNotFoundError, match=r"val\.txt:2: image file not found: .*gone\.png"):
        YoloDataset(data)
    ds = YoloDataset(data, skip_bad=True)
    assert [r.path.name for r in ds.records] == ["a.png"] and ds.issues.counts() == {"skipped image": 1}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.1", "expected 'class cx cy w h' or a polygon"),
        ("cat 0.5 0.5 0.1 0.1", "class must be an integer"),
        ("0 0.5 nan 0.1 0.1", "coordinates must be finite"),
        ("0 0.5 0.5 x 0.1", "coordinates must be numbers"),
        ("0 0.1 0.1 0.2 0.2 0.3", None),  # 5 values: a box with a confidence, not an error
        ("7 0.5 0.5 0.1 0.1", "class id 7 is not in names"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path: Path, line: str, message: str | None) -> None:
    data = _dataset(tmp_path, {"a": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    if message is None:
        assert len(YoloDataset(data).records[0].boxes) == 2
        return
    with pytest.raises(BadDataError, match=message) as info:
        YoloDataset(data)
    assert f"{tmp_path / 'labels' / 'val' / 'a.txt'}:2:" in str(info.value)
    ds = YoloDataset(data, skip_bad=True)
    assert [r.path.name for r in ds.records] == ["b.png"] and ds.records[0].image_id == 2


def test_class_outside_the_models_classes(tmp_path: Path) -> None:
    data = _dataset(tmp_path, {"a": "1 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(BadDataError, match=r"a\.txt:1: class 'dog' \(id 1\) is not in class_names"):
        YoloDataset(data, class_names=["cat"])


def test_boxes_outside_are_dropped_and_listed(tmp_path: Path) -> None:
    ds = YoloDataset(_dataset(tmp_path, {"a": "0 1.5 0.5 0.2 0.2\n0 1.0 0.5 0.4 0.2\n"}))
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[32.0, 12, 40, 18]]))
    assert ds.num_invalid_boxes == 1 and "a.txt:1" in ds.issues.items[0].file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("val: [unclosed\n", "malformed YAML"),
        ("names: [cat]\n", "no 'val' entry"),
        ("val: images/val\nnames: cat\n", "'names' must be a list or a mapping"),
        ("val: images/val\nnames: [cat, dog]\nnc: 3\n", "'nc' is 3 but 'names' has 2"),
        ("val: nowhere\nnames: [cat]\n", "no such folder, image list or image"),
    ],
)
def test_broken_data_yaml_is_an_error(tmp_path: Path, text: str, message: str) -> None:
    _dataset(tmp_path, {})
    (tmp_path / "data.yaml").write_text(text)
    with pytest.raises(BadDataError, match=message):
        YoloDataset(tmp_path / "data.yaml", skip_bad=True)


def test_label_path_follows_ultralytics() -> None:
    assert label_path(Path("/d/images/train/images/x.jpg")) == Path("/d/images/train/labels/x.txt")
    assert label_path(Path("/d/flat/x.png")) == Path("/d/flat/x.txt")
