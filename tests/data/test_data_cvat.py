"""CvatDataset: boxes, polygons and rotated boxes, occluded/z_order kept, meta labels, bad data by element."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from harnet.data.cvat import CvatDataset
from harnet.data.issues import BadDataError

META = "<meta><task><labels><label><name>dog</name></label><label><name>cat</name></label></labels></task></meta>"


def _xml(*images: str, meta: str = META) -> str:
    return f'<?xml version="1.0"?><annotations><version>1.1</version>{meta}{"".join(images)}</annotations>'


def _box(label: str, x0: float, y0: float, x1: float, y1: float, extra: str = "") -> str:
    return f'<box label="{label}" occluded="0" xtl="{x0}" ytl="{y0}" xbr="{x1}" ybr="{y1}" z_order="0" {extra}/>'


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "img"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30)).save(folder / name)
    return folder


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "annotations.xml").write_text(text)
    return tmp_path / "annotations.xml"


def test_boxes_polygons_rotation_and_attributes(tmp_path: Path, images: Path) -> None:
    a = ('<image id="0" name="a.png" width="40" height="30">'
         + _box("cat", 1.5, 2.25, 10, 12)
         + '<polygon label="dog" occluded="1" points="5.00,6.00;20.50,8.00;12.00,25.00" z_order="2"/>'
         + _box("dog", 10, 10, 30, 20, 'rotation="90.0"')
         + '<tag label="cat"/><points label="cat" occluded="0" points="1,1" z_order="0"/></image>')
    b = '<image id="1" name="folder/b.png" width="40" height="30"></image>'
    ds = CvatDataset(_write(tmp_path, _xml(a, b)), images)
    assert ds.class_names == ["dog", "cat"]  # <meta> order
    assert [r.path.name for r in ds.records] == ["a.png", "b.png"] and [r.image_id for r in ds.records] == [1, 2]
    # a box turned 90 degrees about its centre (20, 15): 10 wide and 20 tall
    torch.testing.assert_close(ds.records[0].boxes, torch.tensor([[1.5, 2.25, 10, 12], [5, 6, 20.5, 25],
                                                                  [15, 5, 25, 25]]), atol=1e-5, rtol=0)
    assert ds.records[0].labels.tolist() == [1, 0, 0]
    assert ds.box_attributes[1][1] == {"occluded": True, "z_order": 2}
    assert ds.records[1].boxes.shape == (0, 4)


def test_rotated_box_bounding_box(tmp_path: Path, images: Path) -> None:
    ds = CvatDataset(_write(tmp_path, _xml('<image id="0" name="a.png" width="40" height="30">'
                                           + _box("cat", 10, 10, 20, 14, 'rotation="30"') + "</image>")), images)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    half_w, half_h = 5 * c + 2 * s, 5 * s + 2 * c
    expected = torch.tensor([[15 - half_w, 12 - half_h, 15 + half_w, 12 + half_h]])
    torch.testing.assert_close(ds.records[0].boxes, expected, atol=1e-5, rtol=0)


def test_labels_seen_without_meta_and_model_classes(tmp_path: Path, images: Path) -> None:
    path = _write(tmp_path, _xml('<image id="0" name="a.png" width="40" height="30">' + _box("zebra", 1, 1, 5, 5)
                                 + _box("ant", 1, 1, 5, 5) + "</image>", meta=""))
    assert CvatDataset(path, images).class_names == ["ant", "zebra"]
    assert CvatDataset(path, images, class_names=["zebra", "ant"]).records[0].labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("element", "message"),
    [
        ('<image id="1" name="b.png" width="0" height="30"/>', r"<image> 1 \(name 'b.png'\): 'width' must be"),
        ('<image id="1" name="b.png" width="40" height="30">' + _box("cat", 1, "x", 5, 5) + "</image>",
         r"<image> 1 \(name 'b.png'\) <box> 0 \(label 'cat'\): 'ytl' must be a number"),
        ('<image id="1" name="b.png" width="40" height="30"><polygon label="cat" points="1,1;2,2"/></image>',
         r"<polygon> 0 \(label 'cat'\): 'points' must be at least 3"),
        ('<image id="1" name="b.png" width="40" height="30">' + _box("cow", 1, 1, 5, 5) + "</image>",
         r"<box> 0 \(label 'cow'\): label not declared in <meta>"),
        ('<image id="1" name="gone.png" width="40" height="30"/>', r"<image> 1 \(name 'gone.png'\): image file not"),
    ],
)
def test_bad_element_is_named(tmp_path: Path, images: Path, element: str, message: str) -> None:
    good = '<image id="0" name="a.png" width="40" height="30">' + _box("cat", 1, 1, 5, 5) + "</image>"
    path = _write(tmp_path, _xml(good, element))
    with pytest.raises((BadDataError, FileNotFoundError), match=message) as info:
        CvatDataset(path, images)
    assert str(info.value).startswith(f"{path}: ")
    ds = CvatDataset(path, images, skip_bad=True)
    assert [r.path.name for r in ds.records] == ["a.png"] and ds.issues.counts() == {"skipped image": 1}


def test_box_outside_is_dropped_and_attributes_stay_aligned(tmp_path: Path, images: Path) -> None:
    path = _write(tmp_path, _xml('<image id="0" name="a.png" width="40" height="30">' + _box("cat", 50, 1, 60, 5)
                                 + _box("dog", 1, 1, 5, 5, 'z_order="3"').replace('z_order="0" ', "") + "</image>"))
    ds = CvatDataset(path, images)
    assert ds.num_invalid_boxes == 1 and ds.records[0].labels.tolist() == [0]
    assert ds.box_attributes[1] == [{"occluded": False, "z_order": 3}]


@pytest.mark.parametrize(
    ("text", "message"),
    [("<annotations><image>", "malformed XML"), ("<annotation/>", "expected <annotations>"),
     ("<annotations><track id='0' label='cat'/></annotations>", "CVAT for video")],
)
def test_broken_file_is_an_error(tmp_path: Path, images: Path, text: str, message: str) -> None:
    with pytest.raises(BadDataError, match=message):
        CvatDataset(_write(tmp_path, text), images, skip_bad=True)
