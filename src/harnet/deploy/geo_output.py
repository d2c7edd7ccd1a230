"""Georeferenced detections: a GeoPackage in the raster's CRS and a GeoJSON in lon/lat (RFC 7946).

GIS users open predictions next to their orthomosaic, so each box becomes the polygon of its pixel
rectangle mapped through the raster's affine transform (a rotated or sheared raster gives a rotated
polygon, not a bounding box of it). The GeoPackage keeps the raster's CRS (no resampling of the
geometry); GeoJSON is defined in WGS 84 lon/lat only (RFC 7946), so its polygons are the same corners
reprojected. geopandas and pyogrio are the optional ``[geo]`` extra.

A CRS that has no path to lon/lat (a local engineering ``LOCAL_CS``) still gets its GeoPackage; the
GeoJSON is left out and :func:`write_geo_outputs` says why. Both files are written under temporary names
and renamed only once both are complete, so a failure leaves neither half of the pair.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.raster import Affine6
from harnet.utils.errors import first_line


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
        import pyproj  # noqa: F401
        import shapely  # noqa: F401
    except ImportError:
        return False
    return True


def preload_geo() -> None:
    """Import the map writer's libraries in a background thread, while the network runs on the first raster.

    Why: geopandas, pandas and pyogrio take a third of a second to import, a tenth of a 4,000 px raster's
    prediction with an int8 model; imported beside the windows (the runtimes release the GIL) that time is
    hidden. A failed import is only seen later, where :func:`geo_available` is asked."""
    threading.Thread(target=geo_available, name="harnet-preload-geo").start()  # not a daemon: no import cut at exit


def detections_frame(detections: dict[str, np.ndarray], class_names: Sequence[str], crs: str,
                     transform: Affine6) -> Any:
    """A GeoDataFrame: one polygon per box in ``crs``, with score, label, class name and the pixel box."""
    import geopandas as gpd
    from shapely.geometry import Polygon

    boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(-1, 4).tolist()
    labels = [int(v) for v in np.asarray(detections["labels"]).tolist()]
    columns = {
        "score": [float(v) for v in np.asarray(detections["scores"]).tolist()],
        "label": labels,
        "class_name": [class_names[k] for k in labels],
        "px_xmin": [b[0] for b in boxes], "px_ymin": [b[1] for b in boxes],
        "px_xmax": [b[2] for b in boxes], "px_ymax": [b[3] for b in boxes],
    }
    geometry = [Polygon(box_ring(transform, b)) for b in boxes]
    return gpd.GeoDataFrame(columns, geometry=geometry, crs=crs)


def lonlat_problem(crs: str) -> str | None:
    """Why geometries in ``crs`` cannot be reprojected to lon/lat (EPSG:4326), or None when they can."""
    from pyproj import CRS, Transformer

    try:
        Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    except Exception as e:  # a LOCAL_CS (engineering) CRS, or one PROJ cannot read
        return f"its CRS has no transformation to lon/lat ({first_line(e)})"
    return None


def write_geo_outputs(out_dir: Path, stem: str, detections: dict[str, np.ndarray], class_names: Sequence[str],
                      crs: str, transform: Affine6) -> tuple[list[Path], str | None]:
    """``out_dir/<stem>.gpkg`` (the raster's CRS) and ``<stem>.geojson`` (EPSG:4326) -> (written files, note).

    The note says why there is no GeoJSON (a CRS without a path to lon/lat), else None. Both files are
    written to temporary names first and renamed together, so a reader never sees half a file or half a pair."""
    frame = detections_frame(detections, class_names, crs, transform)
    problem = lonlat_problem(crs)
    gpkg, geojson = out_dir / f"{stem}.gpkg", out_dir / f"{stem}.geojson"
    tmp_gpkg, tmp_geojson = out_dir / f".{stem}.tmp.gpkg", out_dir / f".{stem}.tmp.geojson"
    try:
        tmp_gpkg.unlink(missing_ok=True)
        frame.to_file(tmp_gpkg, driver="GPKG", layer="detections", engine="pyogrio")
        if problem is None:
            tmp_geojson.unlink(missing_ok=True)
            frame.to_crs(4326).to_file(tmp_geojson, driver="GeoJSON", engine="pyogrio", RFC7946="YES")
    except BaseException:
        tmp_gpkg.unlink(missing_ok=True)
        tmp_geojson.unlink(missing_ok=True)
        raise
    os.replace(tmp_gpkg, gpkg)
    if problem is None:
        os.replace(tmp_geojson, geojson)
        return [gpkg, geojson], None
    geojson.unlink(missing_ok=True)  # an earlier call's GeoJSON would no longer match the GeoPackage
    return [gpkg], f"no {geojson.name}: {problem}; the GeoPackage keeps the raster's CRS"
