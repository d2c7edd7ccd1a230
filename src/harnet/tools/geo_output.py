"""Georeferenced detections: a GeoPackage in the raster's CRS and a GeoJSON in lon/lat (RFC 7946).

GIS users open predictions next to their orthomosaic, so each box becomes the polygon of its pixel
rectangle mapped through the raster's affine transform (a rotated or sheared raster gives a rotated
polygon, not a bounding box of it). The GeoPackage keeps the raster's CRS (no resampling of the
geometry); GeoJSON is defined in WGS 84 lon/lat only (RFC 7946), so its polygons are the same corners
reprojected. geopandas and pyogrio are the optional ``[geo]`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from harnet.data.raster import Affine6


def pixel_to_map(transform: Affine6, x: float, y: float) -> tuple[float, float]:
    """Pixel coordinates (column, row; 0 = the first pixel's outer corner, GDAL's convention) -> map x, y."""
    a, b, c, d, e, f = transform
    return a * x + b * y + c, d * x + e * y + f


def map_to_pixel(transform: Affine6, mx: float, my: float) -> tuple[float, float]:
    """The inverse of :func:`pixel_to_map`."""
    a, b, c, d, e, f = transform
    det = a * e - b * d
    if det == 0:
        raise ValueError(f"affine transform {transform} is not invertible")
    dx, dy = mx - c, my - f
    return (e * dx - b * dy) / det, (a * dy - d * dx) / det


def box_ring(transform: Affine6, box: Sequence[float]) -> list[tuple[float, float]]:
    """The closed ring (5 points, counter-clockwise on a north-up map) of an XYXY pixel box in map coordinates."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = [(x0, y1), (x1, y1), (x1, y0), (x0, y0)]
    ring = [pixel_to_map(transform, x, y) for x, y in corners]
    return [*ring, ring[0]]


def geo_available() -> bool:
    try:
        import geopandas  # noqa: F401
        import pyogrio  # noqa: F401
    except ImportError:
        return False
    return True


def detections_frame(detections: dict[str, Tensor], class_names: Sequence[str], crs: str, transform: Affine6) -> Any:
    """A GeoDataFrame: one polygon per box in ``crs``, with score, label, class name and the pixel box."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    boxes = detections["boxes"].tolist()
    labels = [int(v) for v in detections["labels"].tolist()]
    columns = {
        "score": [float(v) for v in detections["scores"].tolist()],
        "label": labels,
        "class_name": [class_names[k] for k in labels],
        "px_xmin": [b[0] for b in boxes], "px_ymin": [b[1] for b in boxes],
        "px_xmax": [b[2] for b in boxes], "px_ymax": [b[3] for b in boxes],
    }
    geometry = [Polygon(box_ring(transform, b)) for b in boxes]
    return gpd.GeoDataFrame(columns, geometry=geometry, crs=crs)


def write_geo_outputs(out_dir: Path, stem: str, detections: dict[str, Tensor], class_names: Sequence[str],
                      crs: str, transform: Affine6) -> list[Path]:
    """``out_dir/<stem>.gpkg`` (the raster's CRS) and ``<stem>.geojson`` (EPSG:4326), each written to a
    temporary name and renamed, so a reader never sees half a file."""
    frame = detections_frame(detections, class_names, crs, transform)
    written = []
    gpkg, geojson = out_dir / f"{stem}.gpkg", out_dir / f"{stem}.geojson"
    tmp = out_dir / f".{stem}.tmp.gpkg"
    tmp.unlink(missing_ok=True)
    frame.to_file(tmp, driver="GPKG", layer="detections", engine="pyogrio")
    os.replace(tmp, gpkg)
    written.append(gpkg)
    tmp = out_dir / f".{stem}.tmp.geojson"
    tmp.unlink(missing_ok=True)
    frame.to_crs(4326).to_file(tmp, driver="GeoJSON", engine="pyogrio", RFC7946="YES")
    os.replace(tmp, geojson)
    written.append(geojson)
    return written
