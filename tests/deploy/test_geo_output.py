"""Georeferenced outputs: the affine pixel -> map mapping, the GeoPackage (raster CRS) and GeoJSON (lon/lat)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.deploy.geo_output import box_ring, map_to_pixel, pixel_to_map, write_geo_outputs

NORTH_UP = (0.1, 0.0, 500000.0, 0.0, -0.1, 4000000.0)  # UTM, 0.1 m pixels
ROTATED = (0.08, 0.06, 500000.0, 0.06, -0.08, 4000000.0)


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED])
def test_affine_round_trip_within_half_a_pixel(transform: tuple[float, ...]) -> None:
    for x, y in [(0.0, 0.0), (123.4, 567.8), (9999.5, 12.25)]:
        mx, my = pixel_to_map(transform, x, y)  # type: ignore[arg-type]
        px, py = map_to_pixel(transform, mx, my)  # type: ignore[arg-type]
        assert abs(px - x) < 0.5 and abs(py - y) < 0.5
        assert abs(px - x) < 1e-6 and abs(py - y) < 1e-6
    assert pixel_to_map(NORTH_UP, 10, 20) == pytest.approx((500001.0, 3999998.0))
    ring = box_ring(NORTH_UP, [10, 20, 30, 40])
    assert ring[0] == ring[-1] and len(ring) == 5


def test_geopackage_in_the_raster_crs_and_geojson_in_lonlat(tmp_path: Path) -> None:
    gpd = pytest.importorskip("geopandas")
    pytest.importorskip("pyogrio")
    from pyproj import CRS, Transformer

    crs = CRS.from_epsg(32633).to_wkt()
    det = {"boxes": np.array([[10.0, 20, 30, 40], [100, 100, 150, 120]], np.float32),
           "scores": np.array([0.9, 0.5], np.float32), "labels": np.array([0, 1])}
    written, note = write_geo_outputs(tmp_path, "ortho", det, ["tree", "shrub"], crs, NORTH_UP)
    assert note is None
    assert [p.name for p in written] == ["ortho.gpkg", "ortho.geojson"]
    frame = gpd.read_file(tmp_path / "ortho.gpkg")
    assert frame.crs.to_epsg() == 32633
    assert frame["class_name"].tolist() == ["tree", "shrub"] and frame["score"].tolist() == pytest.approx([0.9, 0.5])
    for row, box in zip(frame.itertuples(), det["boxes"].tolist()):
        assert [row.px_xmin, row.px_ymin, row.px_xmax, row.px_ymax] == pytest.approx(box)
        assert row.geometry.bounds == pytest.approx((500000 + box[0] * 0.1, 4000000 - box[3] * 0.1,
                                                     500000 + box[2] * 0.1, 4000000 - box[1] * 0.1))
    geojson = json.loads((tmp_path / "ortho.geojson").read_text())
    assert "crs" not in geojson  # RFC 7946: WGS 84 lon/lat, no crs member
    to_lonlat = Transformer.from_crs(32633, 4326, always_xy=True)
    for feature, geometry in zip(geojson["features"], frame.geometry):
        lon, lat = feature["geometry"]["coordinates"][0][0]
        x, y = geometry.exterior.coords[0]
        assert (lon, lat) == pytest.approx(to_lonlat.transform(x, y), abs=1e-6)
        assert 14 < lon < 16 and 35 < lat < 37  # UTM 33N, 4000 km north
