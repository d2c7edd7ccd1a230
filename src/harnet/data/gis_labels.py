"""Labels drawn on a map (a GeoPackage, Shapefile, GeoJSON, FlatGeobuf layer) as boxes in a raster's pixels.

What a user holds is a layer drawn in QGIS in whatever CRS the project had, over an orthomosaic in another.
Everything that goes wrong silently elsewhere (a layer in WGS84 read as metres, a layer without CRS, points
where boxes were expected, self-intersecting rings) is either repaired and listed or a one-line error naming
the files, here, before a single tile is cut:

* the layer is read with pyogrio (through geopandas); a file holding several layers needs ``layer``;
* null and empty geometries are dropped, invalid ones repaired (``shapely.make_valid``), lines and repairs
  left without area dropped: each counted by reason and listed with the feature's id;
* the class of a feature is its ``label_field`` value (without one, every feature is ``object``); a feature
  without a value is dropped;
* for each raster the layer is reprojected to the raster's CRS, then mapped through the inverse of the
  raster's affine transform: a polygon's box is the pixel bounding box of the mapped polygon (on a rotated
  raster, the box of the rotated polygon, not the mapped box of its map box), a point's box is a square of
  ``point_size`` metres around it (in the raster's CRS when that is projected, else in the UTM zone of the
  layer) mapped the same way.

A layer without CRS over a georeferenced raster, or a map layer over a raster without CRS, is an error naming
both: guessing is how WGS84 boxes end up misplaced. A raster without CRS takes pixel labels instead, the CSV
of ``data.format: csv`` (:func:`read_pixel_labels`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harnet.data.geo_extra import require
from harnet.utils.errors import first_line

# The class of every feature when no label field is given.
DEFAULT_CLASS = "object"
# Suffixes read as pixel-coordinate CSV labels rather than as a map layer.
CSV_SUFFIXES = {".csv"}

# (a, b, c, d, e, f): map x = a*col + b*row + c, map y = d*col + e*row + f (GDAL's and rasterio's order).
Affine6 = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class RasterGeo:
    """What placing labels on a raster needs: its size and georeference."""

    path: Path
    width: int
    height: int
    crs: Any | None  # pyproj.CRS; None for a raster without one
    transform: Affine6

    @property
    def crs_name(self) -> str:
        return crs_name(self.crs)


def crs_name(crs: Any | None) -> str:
    """``EPSG:32612`` where the CRS has a code, else its name; ``no CRS`` for None."""
    if crs is None:
        return "no CRS"
    authority = crs.to_authority()
    return f"{authority[0]}:{authority[1]}" if authority else str(crs.name)


@dataclass
class LabelIssues:
    """Features dropped (by reason) and repaired while reading and placing labels, each also listed."""

    dropped: Counter[str] = field(default_factory=Counter)
    repaired: int = 0
    lines: list[str] = field(default_factory=list)

    def drop(self, source: str, fid: Any, reason: str) -> None:
        self.dropped[reason] += 1
        self.lines.append(f"{source} feature {fid}: {reason}: dropped")

    def repair(self, source: str, fid: Any, reason: str) -> None:
        self.repaired += 1
        self.lines.append(f"{source} feature {fid}: {reason}: repaired (shapely make_valid)")


@dataclass
class MapLabels:
    """A layer's usable features in the layer's CRS: polygons (their area) or points, with their classes."""

    source: str  # the file (and layer) for messages
    crs: Any | None  # pyproj.CRS
    geometries: np.ndarray  # shapely geometries, polygonal or (multi)point
    is_point: np.ndarray  # (n,) bool
    classes: list[str]  # per feature
    fids: np.ndarray  # (n,) the features' ids, for listing
    read: int  # features in the layer
    issues: LabelIssues


@dataclass
class PixelLabels:
    """Boxes in pixels of one raster: ``boxes`` (n, 4) float64 XYXY, their classes and feature ids."""

    boxes: np.ndarray
    classes: list[str]
    fids: np.ndarray
    reprojected: bool = False  # the layer was reprojected to the raster's CRS


def _list_layers(path: Path) -> list[str]:
    pyogrio = require("pyogrio")
    try:
        return [str(name) for name in pyogrio.list_layers(path)[:, 0]]
    except Exception as e:
        raise ValueError(f"{path}: not a vector layer pyogrio can read ({first_line(e)})") from None


def _class_values(frame: Any, label_field: str | None, source: str) -> list[str | None]:
    if label_field is None:
        return [DEFAULT_CLASS] * len(frame)
    if label_field not in frame.columns:
        fields = ", ".join(str(c) for c in frame.columns if c != frame.geometry.name) or "none"
        raise ValueError(f"{source}: no field {label_field!r} for --label-field (its fields: {fields})")
    pandas = require("pandas")
    values: list[str | None] = []
    for value in frame[label_field].tolist():
        if value is None or (not isinstance(value, str) and bool(pandas.isna(value))):
            values.append(None)
        elif isinstance(value, float) and value.is_integer():
            values.append(str(int(value)))
        else:
            text = str(value).strip()
            values.append(text or None)
    return values


def read_map_labels(path: str | Path, layer: str | None = None, label_field: str | None = None) -> MapLabels:
    """The features of ``path`` (``layer`` where it holds several), cleaned as the module docstring says."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: labels file not found")
    layers = _list_layers(path)
    if layer is None and len(layers) > 1:
        raise ValueError(f"{path} holds {len(layers)} layers ({', '.join(layers)}): choose one with --layer NAME")
    if layer is not None and layer not in layers:
        raise ValueError(f"{path}: no layer {layer!r} (its layers: {', '.join(layers) or 'none'})")
    geopandas, shapely = require("geopandas"), require("shapely")
    try:
        frame = geopandas.read_file(path, layer=layer, engine="pyogrio", fid_as_index=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the layer ({first_line(e)})") from None
    source = f"{path}" + (f" layer {layer!r}" if layer is not None else "")
    if not hasattr(frame, "geometry") or frame.geometry.name not in frame.columns:
        raise ValueError(f"{source}: a table without geometries, not a map layer")
    classes = _class_values(frame, label_field, source)
    issues = LabelIssues()
    geometries = np.asarray(frame.geometry.values, dtype=object)
    fids = np.asarray(frame.index)
    keep_geoms: list[Any] = []
    keep: list[int] = []
    points: list[bool] = []
    for k, geom in enumerate(geometries):
        fid = fids[k]
        if geom is None:
            issues.drop(source, fid, "null geometry")
            continue
        if geom.is_empty:
            issues.drop(source, fid, "empty geometry")
            continue
        repaired = not geom.is_valid
        if repaired:
            issues.repair(source, fid, f"invalid geometry ({shapely.is_valid_reason(geom)})")
            geom = shapely.make_valid(geom)
        kind = geom.geom_type
        if kind in ("Point", "MultiPoint"):
            is_point = True
        elif kind in ("Polygon", "MultiPolygon"):
            is_point = False
        else:
            polygons = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
            if not polygons:
                issues.drop(source, fid, "no area left after repair" if repaired
                            else f"{kind}: neither a polygon nor a point")
                continue
            geom, is_point = shapely.union_all(polygons), False
        if not is_point and geom.area <= 0:
            issues.drop(source, fid, "no area")
            continue
        if classes[k] is None:
            issues.drop(source, fid, f"no class ({label_field} empty)")
            continue
        keep_geoms.append(geom)
        keep.append(k)
        points.append(is_point)
    crs = frame.crs
    return MapLabels(source, crs, object_array(keep_geoms), np.asarray(points, dtype=bool),
                     [str(classes[k]) for k in keep], fids[keep] if keep else np.zeros(0, dtype=np.int64), len(frame),
                     issues)


def object_array(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (geometries), never a nested array."""
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def inverse_affine(transform: Affine6) -> Affine6:
    """The affine mapping map coordinates back to (col, row) pixels; an error for a singular transform."""
    a, b, c, d, e, f = transform
    det = a * e - b * d
    if det == 0 or not math.isfinite(det):
        raise ValueError("the raster's geotransform is singular (zero pixel size)")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)


def _to_pixels(geometries: np.ndarray, transform: Affine6) -> np.ndarray:
    """(n, 4) pixel bounding boxes of the geometries mapped through the inverse of ``transform``.

    The box of a mapped polygon is the box of its mapped vertices (an affine map keeps straight edges), so the
    vertices are mapped and reduced per geometry; on a rotated raster that is the box of the rotated polygon.
    A layer in the wrong CRS reprojects to inf, which stays inf here (and lies on no raster)."""
    shapely = require("shapely")
    out = np.full((len(geometries), 4), np.nan, dtype=np.float64)
    if len(geometries) == 0:
        return out
    a, b, c, d, e, f = inverse_affine(transform)
    xy, owner = shapely.get_coordinates(geometries, return_index=True)
    out[:, :2], out[:, 2:] = np.inf, -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        cols = a * xy[:, 0] + b * xy[:, 1] + c
        rows = d * xy[:, 0] + e * xy[:, 1] + f
        np.minimum.at(out[:, 0], owner, cols)
        np.minimum.at(out[:, 1], owner, rows)
        np.maximum.at(out[:, 2], owner, cols)
        np.maximum.at(out[:, 3], owner, rows)
    return out


def _metric(crs: Any, geometries: np.ndarray) -> tuple[Any, float]:
    """A CRS to draw point squares in and its metres per unit: ``crs`` if projected, else the points' UTM zone."""
    if crs.is_projected:
        factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return crs, float(factor or 1.0)
    geopandas = require("geopandas")
    return geopandas.GeoSeries(geometries, crs=crs).estimate_utm_crs(), 1.0


def _point_squares(geometries: np.ndarray, crs: Any, side_m: float) -> tuple[np.ndarray, Any]:
    """Squares of ``side_m`` metres around each point (the bounding box of a multipoint grown by half a side),
    in a metric CRS; returns them and that CRS."""
    geopandas, shapely = require("geopandas"), require("shapely")
    metric, factor = _metric(crs, geometries)
    series = geopandas.GeoSeries(geometries, crs=crs)
    if not metric.equals(crs):
        series = series.to_crs(metric)
    half = side_m / factor / 2.0
    x0, y0, x1, y1 = np.asarray(shapely.bounds(series.values), dtype=np.float64).reshape(-1, 4).T
    return np.asarray(shapely.box(x0 - half, y0 - half, x1 + half, y1 + half), dtype=object), metric


def place_on_raster(labels: MapLabels, raster: RasterGeo, point_size: float | None) -> PixelLabels:
    """The layer's boxes in ``raster``'s pixels (reprojected to its CRS first), as the module docstring says."""
    if raster.crs is None:
        raise ValueError(f"{raster.path} has no CRS, so the map layer {labels.source} cannot be placed on it: "
                         "georeference the raster, or give pixel labels as a CSV "
                         "(image_path,xmin,ymin,xmax,ymax,label)")
    if labels.crs is None:
        raise ValueError(f"{labels.source} has no CRS while {raster.path} is in {raster.crs_name}: set the layer's "
                         "CRS (QGIS: Layer > Set CRS; or ogr2ogr -a_srs EPSG:CODE out.gpkg in.gpkg)")
    geopandas = require("geopandas")
    geometries = labels.geometries.copy()
    if labels.is_point.any():
        if point_size is None:
            raise ValueError(f"{labels.source} has {int(labels.is_point.sum())} point features: give --point-size "
                             "METRES (the side of the square box drawn around each point)")
        squares, square_crs = _point_squares(geometries[labels.is_point], labels.crs,
                                             point_size)
        if not square_crs.equals(labels.crs):
            squares = np.asarray(geopandas.GeoSeries(squares, crs=square_crs).to_crs(labels.crs).values, dtype=object)
        geometries[labels.is_point] = squares
    reprojected = not labels.crs.equals(raster.crs)
    if reprojected and len(geometries):
        geometries = np.asarray(geopandas.GeoSeries(geometries, crs=labels.crs).to_crs(raster.crs).values,
                                dtype=object)
    boxes = _to_pixels(geometries, raster.transform)
    return PixelLabels(boxes, list(labels.classes), labels.fids, reprojected)


def read_pixel_labels(path: str | Path, rasters: Sequence[Path]) -> tuple[dict[Path, PixelLabels], int]:
    """Pixel boxes per raster from a CSV of ``data.format: csv`` (``image_path,xmin,ymin,xmax,ymax,label``) and
    the number of rows read. A row's image matches a raster by its path relative to the CSV's folder, or else
    by file name; rows of other images are ignored. Malformed rows are a one-line error naming the line."""
    from harnet.data.csv_dataset import parse_csv_annotations

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: labels file not found")
    rows = parse_csv_annotations(path.read_text(encoding="utf-8").splitlines(), path)
    by_name: dict[str, list[Path]] = {}
    for raster in rasters:
        by_name.setdefault(raster.name, []).append(raster)
    resolved = {raster.resolve(): raster for raster in rasters}
    found: dict[Path, tuple[list[tuple[float, float, float, float]], list[str], list[str]]] = {
        r: ([], [], []) for r in rasters}
    for row in rows:
        target = resolved.get((path.parent / row.image).resolve())
        if target is None:
            candidates = by_name.get(Path(row.image).name, [])
            target = candidates[0] if len(candidates) == 1 else None
        if target is None or row.box is None or row.label is None:
            continue
        found[target][0].append(row.box)
        found[target][1].append(row.label)
        found[target][2].append(f"line {row.line}")
    out = {raster: PixelLabels(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), classes,
                               np.asarray(lines, dtype=object))
           for raster, (boxes, classes, lines) in found.items()}
    return out, len(rows)


def is_pixel_csv(path: str | Path) -> bool:
    """Whether ``path`` is read as pixel-coordinate CSV labels (by its suffix) rather than as a map layer."""
    return Path(path).suffix.lower() in CSV_SUFFIXES
