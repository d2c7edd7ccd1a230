"""LabelStudioDataset: percent boxes, rotated rectangles, upload-prefixed names, unlabelled tasks, bad data by task."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from harnet.data.issues import BadDataError
from harnet.data.labelstudio import UNLABELLED_TASK, LabelStudioDataset, file_candidates


def _rect(label: str, x: float, y: float, w: float, h: float, rotation: float = 0, size: bool = True) -> dict:
    result: dict[str, Any] = {"type": "rectanglelabels", "from_name": "label", "to_name": "image",
                              "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                                        "rectanglelabels": [label]}}
    if size:
        result |= {"original_width": 40, "original_height": 20}
    return result


def _task(image: str, *results: dict, cancelled: bool = False) -> dict:
    return {"id": 7, "data": {"image": image}, "annotations": [{"was_cancelled": cancelled, "result": list(results)}]}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "img"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (40, 20)).save(folder / name)
    return folder


def _write(tmp_path: Path, tasks: Any) -> Path:
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    return tmp_path / "export.json"


def test_percent_boxes_rotation_polygons_and_names(tmp_path: Path, images: Path) -> None:
    polygon = {"type": "polygonlabels", "value": {"points": [[10, 10], [50, 20], [30, 90]], "polygonlabels": ["dog"]}}
    tasks = [
        _task("/data/upload/3/1f2e3d4c-a.png", _rect("cat", 25, 50, 50, 25), polygon,
              {"type": "choices", "value": {"choices": ["sunny"]}}),
        # Rotated 90 degrees clockwise about its top-left corner (10, 4): 8 px wide, 4 px tall -> 4 wide, 8 tall.
        {"data": {"image": "/data/local-files/?d=photos%2Fb.png"},
         "annotations": [{"was_cancelled": True, "result": []}, {"result": [_rect("dog", 25, 20, 20, 20, 90)]}]},
        _task("c.png"),  # annotated, nothing in it: a background image
        {"data": {"image": "s3://bucket/a.png"}, "annotations": [], "predictions": [{"result": []}]},
    ]
    ds = LabelStudioDataset(_write(tmp_path, tasks), images)
    assert ds.class_names == ["cat", "dog"] and [r.image_id for r in ds.records] == [1, 2, 3]
    assert [r.path.name for r in ds.records] == ["a.png", "b.png", "c.png"]
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[10.0, 10, 30, 15], [4, 2, 20, 18]]))
    assert ds.records[0].labels.tolist() == [0, 1]
    torch.testing.assert_close(ds.records[1].boxes, torch.tensor([[6.0, 4, 10, 12]]), atol=1e-5, rtol=0)
    assert ds.records[2].boxes.shape == (0, 4)
    assert [(i.action, "tasks[3]" in i.problem) for i in ds.issues.items] == [(UNLABELLED_TASK, True)]


def test_size_from_the_image_when_the_export_has_none(tmp_path: Path, images: Path) -> None:
    ds = LabelStudioDataset(_write(tmp_path, [_task("a.png", _rect("cat", 0, 0, 50, 50, size=False))]), images)
    assert (ds.records[0].width, ds.records[0].height) == (40, 20)
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[0.0, 0, 20, 10]]))


def test_rotation_takes_the_bounding_box(tmp_path: Path, images: Path) -> None:
    ds = LabelStudioDataset(_write(tmp_path, [_task("a.png", _rect("cat", 50, 50, 10, 10, 30))]), images)
    x, y, w, h, c, s = 20.0, 10.0, 4.0, 2.0, math.cos(math.pi / 6), math.sin(math.pi / 6)
    expected = [x - h * s, y, x + w * c, y + w * s + h * c]
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([expected]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "rectanglelabels": ["cat"]}},
         "needs finite numbers x, y, width, height"),
        ({"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": []}},
         "must hold one label"),
        (_rect("bird", 1, 1, 5, 5), "label 'bird' is not in class_names"),
    ],
)
def test_bad_result_names_the_task(tmp_path: Path, images: Path, result: dict, message: str) -> None:
    path = _write(tmp_path, [_task("a.png", _rect("cat", 1, 1, 5, 5)), _task("b.png", result)])
    with pytest.raises(BadDataError, match=message) as info:
        LabelStudioDataset(path, images, class_names=["cat", "dog"])
    assert f"{path}: tasks[1] (id 7) result[0]" in str(info.value)
    ds = LabelStudioDataset(path, images, class_names=["cat", "dog"], skip_bad=True)
    assert [r.path.name for r in ds.records] == ["a.png"] and ds.issues.counts() == {"skipped image": 1}


def test_missing_image_and_outside_box(tmp_path: Path, images: Path) -> None:
    path = _write(tmp_path, [_task("/data/upload/1/abc-zzz.png"), _task("b.png", _rect("cat", 120, 0, 10, 10))])
    message = r"tasks\[0\] \(id 7\): image .*\(looked for abc-zzz\.png and zzz\.png\)"
    with pytest.raises(FileNotFoundError, match=message):
        LabelStudioDataset(path, images)
    ds = LabelStudioDataset(path, images, skip_bad=True)
    assert len(ds) == 1 and ds.num_invalid_boxes == 1


@pytest.mark.parametrize(("text", "message"), [("[{", "malformed JSON"), ('{"data": {}}', "must be a list of tasks")])
def test_broken_file_is_an_error(tmp_path: Path, images: Path, text: str, message: str) -> None:
    (tmp_path / "export.json").write_text(text)
    with pytest.raises(BadDataError, match=message):
        LabelStudioDataset(tmp_path / "export.json", images, skip_bad=True)


def test_file_candidates() -> None:
    assert file_candidates("/data/upload/1/6a2b-my-photo.jpg") == ["6a2b-my-photo.jpg", "my-photo.jpg"]
    assert file_candidates("/data/local-files/?d=dir%2Fsub/x.png") == ["dir/sub/x.png", "x.png"]
    assert file_candidates("https://host/img/y.jpg?token=1") == ["y.jpg"]
