"""Map layers -> boxes in a raster's pixels: reprojection, rotated rasters, points, repairs, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rasterio")
pytest.importorskip("geopandas")
import shapely

from geo_support import GSD, ORIGIN, UTM, to_map, write_layer, write_raster
from harnet.data.gis_labels import (
    DEFAULT_CLASS,
    RasterGeo,
    inverse_affine,
    place_on_raster,
    read_map_labels,
    read_pixel_labels,
)

NORTH_UP = (GSD, 0.0, ORIGIN[0], 0.0, -GSD, ORIGIN[1])


def _geo(path: Path, transform: tuple[float, ...] = NORTH_UP, crs: str | None = UTM, width: int = 300,
         height: int = 200) -> RasterGeo:
    import pyproj

    return RasterGeo(path, width, height, pyproj.CRS(crs) if crs else None, transform)  # type: ignore[arg-type]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_polygons_in_wgs84_land_at_their_pixel_place_on_a_utm_raster(tmp_path: Path) -> None:
    boxes = np.array([[10, 20, 40, 35], [200.5, 100.25, 230, 190], [0, 0, 300, 200]], dtype=np.float64)
    layer = write_layer(tmp_path / "crowns.gpkg", to_map(boxes.tolist()), to_crs="EPSG:4326")
    labels = read_map_labels(layer)
    assert labels.read == 3 and labels.classes == [DEFAULT_CLASS] * 3
    placed = place_on_raster(labels, _geo(tmp_path / "r.tif"), None)
    assert placed.reprojected
    # UTM -> WGS84 -> UTM moves a vertex by far less than a micrometre: the boxes come back to 1e-4 px.
    np.testing.assert_allclose(placed.boxes, boxes, atol=1e-4)


def test_a_rotated_raster_gets_the_pixel_box_of_the_mapped_polygon(tmp_path: Path) -> None:
    angle = math.radians(30)
    rotated = (GSD * math.cos(angle), -GSD * math.sin(angle), ORIGIN[0],
               -GSD * math.sin(angle), -GSD * math.cos(angle), ORIGIN[1])
    boxes = [[10, 20, 40, 35], [100, 50, 160, 120]]
    labels = read_map_labels(write_layer(tmp_path / "l.geojson", to_map(boxes, rotated)))
    placed = place_on_raster(labels, _geo(tmp_path / "r.tif", rotated), None)
    # A rectangle of the raster's pixel grid is a rotated rectangle on the map: mapped back it is that
    # rectangle again, not the (larger) pixel box of its map bounding box.
    np.testing.assert_allclose(placed.boxes, boxes, atol=1e-6)
    a, b, c, d, e, f = inverse_affine(rotated)
    x, y = rotated[2] + rotated[0] * 7 + rotated[1] * 9, rotated[5] + rotated[3] * 7 + rotated[4] * 9
    assert a * x + b * y + c == pytest.approx(7) and d * x + e * y + f == pytest.approx(9)


def test_points_need_point_size_and_become_squares_of_that_many_metres(tmp_path: Path) -> None:
    centres = [(50.0, 40.0), (120.0, 150.0)]
    points = [shapely.Point(ORIGIN[0] + x * GSD, ORIGIN[1] - y * GSD) for x, y in centres]
    labels = read_map_labels(write_layer(tmp_path / "p.gpkg", points, to_crs="EPSG:4326"))
    raster = _geo(tmp_path / "r.tif")
    with pytest.raises(ValueError, match=r"p\.gpkg has 2 point features: give --point-size METRES"):
        place_on_raster(labels, raster, None)
    placed = place_on_raster(labels, raster, 3.0)  # 3 m = 6 px at 0.5 m
    expected = np.array([[x - 3, y - 3, x + 3, y + 3] for x, y in centres])
    # The square is drawn in the raster's (projected) CRS around the reprojected point: exact to 1e-4 px.
    np.testing.assert_allclose(placed.boxes, expected, atol=1e-4)


def test_points_over_a_geographic_raster_are_squared_in_metres(tmp_path: Path) -> None:
    # A WGS84 raster of 1e-5 degree pixels near 45 N: a 10 m square spans about 9 px north-south.
    transform = (1e-5, 0.0, -111.0, 0.0, -1e-5, 45.0)
    point = shapely.Point(-111.0 + 100e-5, 45.0 - 100e-5)
    labels = read_map_labels(write_layer(tmp_path / "p.gpkg", [point], crs="EPSG:4326"))
    placed = place_on_raster(labels, _geo(tmp_path / "r.tif", transform, "EPSG:4326"), 10.0)
    x0, y0, x1, y1 = placed.boxes[0]
    assert (x0 + x1) / 2 == pytest.approx(100, abs=0.05) and (y0 + y1) / 2 == pytest.approx(100, abs=0.05)
    # 10 m in degrees of latitude (~111.1 km a degree) and of longitude at 45 N (~78.8 km a degree).
    assert y1 - y0 == pytest.approx(10 / 111_132 / 1e-5, rel=0.01)
    assert x1 - x0 == pytest.approx(10 / 78_847 / 1e-5, rel=0.01)


def test_invalid_null_empty_and_line_geometries_are_repaired_or_dropped_and_listed(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(ORIGIN[0], ORIGIN[1]), (ORIGIN[0] + 10, ORIGIN[1] - 10),
                              (ORIGIN[0] + 10, ORIGIN[1]), (ORIGIN[0], ORIGIN[1] - 10)])
    sliver = shapely.Polygon([(ORIGIN[0], ORIGIN[1]), (ORIGIN[0] + 10, ORIGIN[1]), (ORIGIN[0] + 5, ORIGIN[1])])
    good = to_map([[40, 40, 60, 60]])[0]
    line = shapely.LineString([(ORIGIN[0], ORIGIN[1]), (ORIGIN[0] + 5, ORIGIN[1] - 5)])
    layer = write_layer(tmp_path / "bad.gpkg", [good, bowtie, None, shapely.Polygon(), line, sliver])
    labels = read_map_labels(layer)
    assert labels.read == 6 and len(labels.geometries) == 2
    issues = labels.issues
    assert issues.repaired == 2  # the bowtie (two triangles kept) and the collapsed ring (nothing left)
    assert dict(issues.dropped) == {"null geometry": 1, "empty geometry": 1,
                                    "LineString: neither a polygon nor a point": 1, "no area left after repair": 1}
    assert any("feature 2: invalid geometry (Self-intersection" in line and "repaired" in line
               for line in issues.lines)
    assert any("feature 3: null geometry: dropped" in line for line in issues.lines)
    placed = place_on_raster(labels, _geo(tmp_path / "r.tif"), None)
    np.testing.assert_allclose(placed.boxes, [[40, 40, 60, 60], [0, 0, 20, 20]], atol=1e-6)


def test_a_layer_without_crs_over_a_georeferenced_raster_names_both(tmp_path: Path) -> None:
    labels = read_map_labels(write_layer(tmp_path / "nocrs.shp", to_map([[1, 1, 5, 5]]), crs=None))
    with pytest.raises(ValueError, match=r"nocrs\.shp has no CRS while .*r\.tif is in EPSG:32612"):
        place_on_raster(labels, _geo(tmp_path / "r.tif"), None)


def test_a_map_layer_over_a_raster_without_crs_asks_for_pixel_labels(tmp_path: Path) -> None:
    labels = read_map_labels(write_layer(tmp_path / "l.gpkg", to_map([[1, 1, 5, 5]])))
    with pytest.raises(ValueError, match=r"plain\.tif has no CRS, so the map layer .*l\.gpkg.*CSV"):
        place_on_raster(labels, _geo(tmp_path / "plain.tif", crs=None), None)


def test_a_file_of_several_layers_needs_layer_and_names_them(tmp_path: Path) -> None:
    path = tmp_path / "two.gpkg"
    write_layer(path, to_map([[1, 1, 5, 5]]), layer="crowns")
    write_layer(path, to_map([[1, 1, 9, 9], [2, 2, 4, 4]]), layer="cars")
    with pytest.raises(ValueError, match=r"two\.gpkg holds 2 layers \(crowns, cars\): choose one with --layer"):
        read_map_labels(path)
    with pytest.raises(ValueError, match=r"no layer 'trees' \(its layers: crowns, cars\)"):
        read_map_labels(path, layer="trees")
    assert read_map_labels(path, layer="cars").read == 2


def test_label_field_classes_missing_field_and_empty_values(tmp_path: Path) -> None:
    layer = write_layer(tmp_path / "l.gpkg", to_map([[1, 1, 5, 5], [6, 6, 9, 9], [10, 10, 20, 20]]),
                        kind=["pine", None, "oak"], code=[3.0, 4.0, 5.0])
    labels = read_map_labels(layer, label_field="kind")
    assert labels.classes == ["pine", "oak"] and dict(labels.issues.dropped) == {"no class (kind empty)": 1}
    assert read_map_labels(layer, label_field="code").classes == ["3", "4", "5"]
    with pytest.raises(ValueError, match=r"no field 'species' for --label-field \(its fields: kind, code\)"):
        read_map_labels(layer, label_field="species")


@pytest.mark.parametrize("suffix", [".shp", ".geojson", ".fgb"])
def test_shapefile_geojson_and_flatgeobuf_read_alike(tmp_path: Path, suffix: str) -> None:
    layer = write_layer(tmp_path / f"l{suffix}", to_map([[10, 20, 40, 35]]), to_crs="EPSG:3857", cls=["car"])
    placed = place_on_raster(read_map_labels(layer, label_field="cls"), _geo(tmp_path / "r.tif"), None)
    assert placed.classes == ["car"]
    np.testing.assert_allclose(placed.boxes, [[10, 20, 40, 35]], atol=1e-4)


def test_unreadable_and_missing_label_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.gpkg: labels file not found"):
        read_map_labels(tmp_path / "nope.gpkg")
    junk = tmp_path / "junk.gpkg"
    junk.write_text("not a geopackage")
    with pytest.raises(ValueError, match=r"junk\.gpkg: not a vector layer pyogrio can read"):
        read_map_labels(junk)


def test_pixel_csv_labels_match_rasters_by_path_or_name(tmp_path: Path) -> None:
    a = write_raster(tmp_path / "a.tif", crs=None)
    (tmp_path / "sub").mkdir()
    b = write_raster(tmp_path / "sub" / "b.tif", crs=None)
    csv = tmp_path / "labels.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\na.tif,1,2,30,40,car\nb.tif,5,5,9,9,van\n"
                   "sub/b.tif,10,10,20,20,car\nother.tif,1,1,2,2,car\n")
    placed, rows = read_pixel_labels(csv, [a, b])
    assert rows == 4
    np.testing.assert_array_equal(placed[a].boxes, [[1, 2, 30, 40]])
    assert placed[a].classes == ["car"] and list(placed[a].fids) == ["line 2"]
    assert placed[b].classes == ["van", "car"]
