"""``harnet data tiles``: GeoTIFF tiles and COCO annotations from rasters under a map layer of labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("geopandas")
import rasterio
import shapely

from geo_support import GSD, ORIGIN, random_boxes, to_map, write_layer, write_raster
from harnet.data.tiles import ISSUES_FILE, TileOptions, boxes_in_windows, make_tiles
from harnet.deploy.tiling import window_grid
from harnet.tools.cli import main
from tests_support import TINY


def _split(out: Path, name: str) -> dict[str, Any]:
    return json.loads((out / "annotations" / f"instances_{name}.json").read_text())


def _images(out: Path) -> list[tuple[str, dict[str, Any], list[list[float]]]]:
    """(split, image entry, its XYXY boxes) for every tile written."""
    found = []
    for name in ("train", "val"):
        data = _split(out, name)
        boxes: dict[int, list[list[float]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
        found += [(name, image, boxes.get(image["id"], [])) for image in data["images"]]
    return found


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _share_pixel(a: list[int], b: list[int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_every_crown_inside_a_tile_is_in_its_annotations_at_its_place(tmp_path: Path) -> None:
    """The issue's acceptance on synthetic data: crowns (round polygons) drawn in EPSG:4326 over a UTM raster."""
    width, height = 420, 330
    raster = write_raster(tmp_path / "ortho.tif", width, height)
    rng = np.random.default_rng(0)
    centres = rng.uniform([10, 10], [width - 10, height - 10], (120, 2))
    radii = rng.uniform(3, 12, 120)
    pixel_crowns = [shapely.Point(x, y).buffer(r, quad_segs=8) for (x, y), r in zip(centres, radii, strict=True)]
    expected = np.array([c.bounds for c in pixel_crowns])
    crowns = [shapely.Polygon([(ORIGIN[0] + x * GSD, ORIGIN[1] - y * GSD) for x, y in c.exterior.coords])
              for c in pixel_crowns]
    layer = write_layer(tmp_path / "crowns.gpkg", crowns, to_crs="EPSG:4326", species=["pine", "oak"] * 60)
    out = tmp_path / "tiles"
    summary = make_tiles([raster], layer, out, TileOptions(size=100, overlap=0.25, val=0.3, label_field="species",
                                                            seed=3))
    assert summary.features_read == 120 and summary.reprojected == 120 and summary.labels_crs == "EPSG:4326"
    assert set(summary.boxes) == {"oak", "pine"}
    assert [c["name"] for c in _split(out, "train")["categories"]] == ["oak", "pine"]
    tiles = _images(out)
    assert summary.tiles["train"] > 0 and summary.tiles["val"] > 0
    checked = 0
    for _, image, boxes in tiles:
        x, y, w, h = image["window"]
        inside = ((expected[:, 0] >= x) & (expected[:, 1] >= y) & (expected[:, 2] <= x + w)
                  & (expected[:, 3] <= y + h))
        for box in expected[inside] - [x, y, x, y]:
            assert max(_iou(box.tolist(), b) for b in boxes) >= 0.95
            checked += 1
    assert checked >= 50
    # No val tile shares a pixel with a train tile.
    val = [image["window"] for split, image, _ in tiles if split == "val"]
    train = [image["window"] for split, image, _ in tiles if split == "train"]
    assert not any(_share_pixel(a, b) for a in val for b in train)
    # Each tile is a GeoTIFF at its place: the window's pixels, CRS and transform.
    split, image, _ = tiles[0]
    x, y, w, h = image["window"]
    with rasterio.open(raster) as src, rasterio.open(out / split / image["file_name"]) as tile:
        assert tile.crs == src.crs and (tile.width, tile.height, tile.count) == (w, h, 3)
        a, b, c, d, e, f = (src.transform[k] for k in range(6))
        assert tile.transform.almost_equals(rasterio.Affine(a, b, c + a * x, d, e, f + e * y))
        np.testing.assert_array_equal(tile.read(), src.read(window=rasterio.windows.Window(x, y, w, h)))
    assert summary.picture.is_file() and summary.issues_file is None


def test_a_box_cut_by_a_tile_edge_is_kept_by_its_visible_fraction(tmp_path: Path) -> None:
    grid = window_grid(200, 100, 100, 0.0)
    # 20 of 50 px in the left tile (0.4), 30 in the right (0.6).
    window, owner, clipped, touched, kept, dropped = boxes_in_windows(np.array([[80.0, 10, 130, 30]]), grid, 0.5)
    assert window.tolist() == [1] and owner.tolist() == [0] and (kept, dropped) == (1, 1)
    assert touched.tolist() == [0, 1]  # the left tile shows part of an object: no negative
    np.testing.assert_allclose(clipped, [[0, 10, 30, 30]])
    window, _, clipped, _, kept, dropped = boxes_in_windows(np.array([[80.0, 10, 130, 30]]), grid, 0.4)
    assert window.tolist() == [0, 1] and (kept, dropped) == (2, 0)
    np.testing.assert_allclose(clipped, [[80, 10, 100, 30], [0, 10, 30, 30]])
    # Exactly half inside stays kept, also after a round trip through map coordinates (float noise).
    window, *_ = boxes_in_windows(np.array([[75.00000000001, 0, 125, 10]]), grid, 0.5)
    assert window.tolist() == [0, 1]


def test_all_nodata_tiles_are_never_written_and_an_all_nodata_raster_is_named(tmp_path: Path) -> None:
    data = np.full((3, 100, 300), 7, dtype=np.uint8)
    data[:, :, :100] = 0  # the first tile is nodata
    raster = write_raster(tmp_path / "r.tif", 300, 100, data=data, nodata=0)
    layer = write_layer(tmp_path / "l.gpkg", to_map([[10, 10, 30, 30], [150, 10, 170, 30], [250, 50, 270, 70]]))
    out = tmp_path / "out"
    summary = make_tiles([raster], layer, out, TileOptions(size=100, val=0.0))
    assert summary.tiles["nodata"] == 1 and summary.tiles["train"] == 2
    assert sorted(p.name for p in (out / "train").iterdir()) == ["r_x100_y0.tif", "r_x200_y0.tif"]
    with rasterio.open(out / "train" / "r_x100_y0.tif") as tile:
        assert tile.nodata == 0
    blank = write_raster(tmp_path / "blank.tif", 300, 100, data=np.zeros((3, 100, 300), np.uint8), nodata=0)
    with pytest.raises(ValueError, match=r"every box lies on nodata pixels of .*blank\.tif"):
        make_tiles([blank], layer, tmp_path / "out2", TileOptions(size=100))
    # Beside a raster with data, the blank one only adds nodata tiles.
    summary = make_tiles([raster, blank], layer, tmp_path / "out3", TileOptions(size=100, val=0.0))
    assert summary.tiles["nodata"] == 4 and summary.tiles["train"] == 2


def test_one_band_and_five_band_rasters_keep_their_bands_type_and_nodata(tmp_path: Path) -> None:
    grey = write_raster(tmp_path / "grey.tif", 200, 200, bands=1)
    multi = write_raster(tmp_path / "multi.tif", 200, 200, bands=5, dtype="uint16", nodata=0)
    boxes = random_boxes(30, 200, 200, seed=1)
    layer = write_layer(tmp_path / "l.gpkg", to_map(boxes.tolist()))
    out = tmp_path / "out"
    summary = make_tiles([grey, multi], layer, out, TileOptions(size=64, val=0.25))
    assert [(r.bands, r.dtype) for r in summary.rasters] == [(1, "uint8"), (5, "uint16")]
    for split, image, _ in _images(out):
        with rasterio.open(out / split / image["file_name"]) as tile:
            expected = (1, "uint8", None) if image["file_name"].startswith("grey") else (5, "uint16", 0)
            assert (tile.count, tile.dtypes[0], tile.nodata) == expected
    assert summary.picture.is_file()


def test_label_free_tiles_are_written_for_the_empty_fraction_seeded(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "r.tif", 640, 640)
    layer = write_layer(tmp_path / "l.gpkg", to_map([[10, 10, 30, 30], [400, 400, 420, 420]]))
    none = make_tiles([raster], layer, tmp_path / "a", TileOptions(size=64, val=0.0))
    assert none.tiles["train"] == 2 and none.tiles["no_labels"] == 98
    half = make_tiles([raster], layer, tmp_path / "b", TileOptions(size=64, val=0.0, empty=0.5, seed=1))
    assert half.tiles["empty_train"] == 49 and half.tiles["train"] == 51 and half.tiles["no_labels"] == 49
    again = make_tiles([raster], layer, tmp_path / "c", TileOptions(size=64, val=0.0, empty=0.5, seed=1))
    assert sorted(p.name for p in (tmp_path / "b" / "train").iterdir()) == sorted(
        p.name for p in (tmp_path / "c" / "train").iterdir()) and again.tiles == half.tiles
    assert len(_split(tmp_path / "b", "train")["images"]) == 51


def test_overlapping_tiles_straddling_the_val_border_are_dropped_and_counted(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "r.tif", 600, 600)
    layer = write_layer(tmp_path / "l.gpkg", to_map(random_boxes(200, 600, 600, seed=2).tolist()))
    out = tmp_path / "out"
    summary = make_tiles([raster], layer, out, TileOptions(size=64, overlap=0.5, val=0.2, block=2))
    assert summary.tiles["straddling"] > 0 and summary.tiles["val"] > 0 and summary.block == 2
    tiles = _images(out)
    val = [image["window"] for split, image, _ in tiles if split == "val"]
    train = [image["window"] for split, image, _ in tiles if split == "train"]
    assert not any(_share_pixel(a, b) for a in val for b in train)
    assert summary.picture.is_file()


def test_bad_geometries_are_counted_and_listed_in_a_file(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "r.tif", 200, 200)
    bowtie = shapely.Polygon([(ORIGIN[0], ORIGIN[1]), (ORIGIN[0] + 10, ORIGIN[1] - 10),
                              (ORIGIN[0] + 10, ORIGIN[1]), (ORIGIN[0], ORIGIN[1] - 10)])
    far = to_map([[5000, 5000, 5010, 5010]])[0]
    layer = write_layer(tmp_path / "l.gpkg", [*to_map([[40, 40, 60, 60]]), bowtie, None, far])
    summary = make_tiles([raster], layer, tmp_path / "out", TileOptions(size=100, val=0.0))
    assert summary.dropped == {"null geometry": 1, "outside every raster": 1} and summary.repaired == 1
    assert summary.features_read == 4 and summary.features_used == 2
    listed = (tmp_path / "out" / ISSUES_FILE).read_text().splitlines()
    assert len(listed) == 3 and any("feature 4: outside every raster: dropped" in line for line in listed)
    text = "\n".join(summary.lines())
    assert "1 null geometry" in text and "repaired: 1" in text and ISSUES_FILE in text


def test_features_all_outside_every_raster_is_an_error_naming_the_files(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "r.tif", 200, 200)
    # UTM numbers in a layer that says it is WGS84: reprojected they land nowhere near the raster.
    wrong = write_layer(tmp_path / "wrong.gpkg", to_map([[10, 10, 20, 20]]), crs="EPSG:4326")
    with pytest.raises(ValueError, match=r"wrong\.gpkg: none of its 1 usable features lies on .*r\.tif "
                                         r"\(the layer says EPSG:4326; .*a layer in the wrong CRS\?"):
        make_tiles([raster], wrong, tmp_path / "out")


def test_pixel_csv_labels_for_a_raster_without_crs(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "photo.tif", 200, 100, crs=None)
    csv = tmp_path / "labels.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\nphoto.tif,10,10,30,40,car\nphoto.tif,150,20,170,30,van\n")
    out = tmp_path / "out"
    summary = make_tiles([raster], csv, out, TileOptions(size=100, val=0.0))
    assert summary.labels_crs == "pixel coordinates" and summary.boxes == {"car": {"train": 1, "val": 0},
                                                                          "van": {"train": 1, "val": 0}}
    boxes = {image["file_name"]: b for _, image, b in _images(out)}
    assert boxes == {"photo_x0_y0.tif": [[10, 10, 30, 40]], "photo_x100_y0.tif": [[50, 20, 70, 30]]}
    tile_path = out / "train" / "photo_x0_y0.tif"
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning), rasterio.open(tile_path) as tile:
        assert tile.crs is None
    with pytest.raises(ValueError, match=r"photo\.tif has no CRS, so the map layer"):
        make_tiles([raster], write_layer(tmp_path / "l.gpkg", to_map([[1, 1, 9, 9]])), tmp_path / "o2")


@pytest.mark.parametrize(("options", "message"), [
    ({"size": 16}, r"--size 16: at least 32 px"), ({"val": 1.0}, r"--val 1"), ({"empty": 2.0}, r"--empty 2"),
    ({"min_visible": 0.0}, r"--min-visible 0"), ({"point_size": -1.0}, r"--point-size -1"),
    ({"overlap": 0.9}, r"--overlap 0.9: at most 0.75"),
])
def test_options_that_cannot_work(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    raster = write_raster(tmp_path / "r.tif", 100, 100)
    layer = write_layer(tmp_path / "l.gpkg", to_map([[10, 10, 20, 20]]))
    with pytest.raises(ValueError, match=message):
        make_tiles([raster], layer, tmp_path / "out", TileOptions(**options))


def _cli_inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    raster = write_raster(tmp_path / "r.tif", 200, 200)
    layer = write_layer(tmp_path / "l.gpkg", to_map(random_boxes(20, 200, 200).tolist()), kind=["a", "b"] * 10)
    points = write_layer(tmp_path / "p.gpkg", [shapely.Point(ORIGIN[0] + 20, ORIGIN[1] - 20)])
    nocrs = write_layer(tmp_path / "nocrs.shp", to_map([[1, 1, 5, 5]]), crs=None)
    return raster, layer, points, nocrs


def test_cli_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raster, layer, _, _ = _cli_inputs(tmp_path)
    out = tmp_path / "out"
    assert main(["data", "tiles", str(raster), "--labels", str(layer), "--out", str(out), "--size", "64",
                 "--label-field", "kind", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "harnet data tiles: 1 raster(s)" in printed and "r.tif: 200x200 px, 3 band(s) uint8, EPSG:32612" in printed
    assert "seed 4" in printed and "blocks of 1x1 tiles" in printed and "picture:" in printed
    assert (out / "tiles.png").is_file() and (out / "annotations" / "instances_val.json").is_file()


@pytest.mark.parametrize(("case", "message"), [
    ("points", r"p\.gpkg has 1 point features: give --point-size METRES"),
    ("nocrs", r"nocrs\.shp has no CRS while .*r\.tif is in EPSG:32612"),
    ("missing", r"nope\.tif: raster file not found"),
    ("size", r"--size 8: at least 32 px"),
    ("field", r"no field 'species' for --label-field"),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
                                             message: str) -> None:
    raster, layer, points, nocrs = _cli_inputs(tmp_path)
    args = {"points": [str(raster), "--labels", str(points)], "nocrs": [str(raster), "--labels", str(nocrs)],
            "missing": [str(tmp_path / "nope.tif"), "--labels", str(layer)],
            "size": [str(raster), "--labels", str(layer), "--size", "8"],
            "field": [str(raster), "--labels", str(layer), "--label-field", "species"]}[case]
    assert main(["data", "tiles", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harnet: error: ") and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err)


def test_harnet_train_reads_the_tiles(tmp_path: Path) -> None:
    raster = write_raster(tmp_path / "r.tif", 256, 256)
    layer = write_layer(tmp_path / "l.gpkg", to_map(random_boxes(40, 256, 256, seed=5).tolist()))
    out = tmp_path / "tiles"
    make_tiles([raster], layer, out, TileOptions(size=64, val=0.25))
    sets = [*TINY, "data.format=coco", f"data.train_images={out / 'train'}",
            f"data.train_annotations={out / 'annotations' / 'instances_train.json'}",
            f"data.val_images={out / 'val'}", f"data.val_annotations={out / 'annotations' / 'instances_val.json'}",
            "train.max_steps=2", "train.checkpoint_every=1", "train.threads=1", f"output_dir={tmp_path / 'run'}"]
    args = ["train", "--config", "demo", "--no-progress"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert (tmp_path / "run" / "last.pt").is_file() or any((tmp_path / "run").glob("*.pt"))


def test_a_mask_band_counts_as_nodata_and_travels_with_the_tiles(tmp_path: Path) -> None:
    raster = tmp_path / "masked.tif"
    mask = np.full((100, 300), 255, dtype=np.uint8)
    mask[:, :100] = 0  # the first tile is masked out
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
            raster, "w", driver="GTiff", width=300, height=100, count=3, dtype="uint8", crs="EPSG:32612",
            transform=rasterio.Affine(GSD, 0, ORIGIN[0], 0, -GSD, ORIGIN[1])) as out:
        out.write(np.full((3, 100, 300), 9, dtype=np.uint8))
        out.write_mask(mask)
    layer = write_layer(tmp_path / "l.gpkg", to_map([[10, 10, 30, 30], [150, 10, 170, 30]]))
    out_dir = tmp_path / "out"
    summary = make_tiles([raster], layer, out_dir, TileOptions(size=100, val=0.0))
    assert summary.tiles["nodata"] == 1 and summary.tiles["train"] == 1
    with rasterio.open(out_dir / "train" / "masked_x100_y0.tif") as tile:
        assert [f.name for f in tile.mask_flag_enums[0]] == ["per_dataset"]
        assert tile.dataset_mask()[:, :50].all()
