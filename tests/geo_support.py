"""Small synthetic GeoTIFFs and map layers for the tests of ``harnet data tiles`` (not fixtures)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

UTM = "EPSG:32612"
# A UTM origin in zone 12N (north-western USA) and a 0.5 m pixel.
ORIGIN = (500_000.0, 4_980_000.0)
GSD = 0.5


def write_raster(path: Path, width: int = 300, height: int = 200, bands: int = 3, dtype: str = "uint8",
                 crs: str | None = UTM, transform: tuple[float, ...] | None = None, nodata: float | None = None,
                 data: np.ndarray | None = None, seed: int = 0) -> Path:
    """A GeoTIFF of random pixels (``data`` if given), north-up at :data:`ORIGIN` and :data:`GSD` by default."""
    import rasterio

    if data is None:
        high = 250 if dtype == "uint8" else 4000
        data = np.random.default_rng(seed).integers(1, high, (bands, height, width)).astype(dtype)
    a, b, c, d, e, f = transform or (GSD, 0.0, ORIGIN[0], 0.0, -GSD, ORIGIN[1])
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": dtype}
    if crs is not None:
        profile |= {"crs": crs, "transform": rasterio.Affine(a, b, c, d, e, f)}
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as out:
            out.write(data)
    return path


def to_map(boxes: Sequence[Sequence[float]], transform: tuple[float, ...] | None = None) -> list[Any]:
    """Pixel XYXY rectangles as polygons in map coordinates through ``transform`` (default north-up)."""
    import shapely

    a, b, c, d, e, f = transform or (GSD, 0.0, ORIGIN[0], 0.0, -GSD, ORIGIN[1])
    out = []
    for x0, y0, x1, y1 in boxes:
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        out.append(shapely.Polygon([(a * x + b * y + c, d * x + e * y + f) for x, y in corners]))
    return out


def write_layer(path: Path, geometries: Sequence[Any], crs: str | None = UTM, to_crs: str | None = None,
                layer: str | None = None, **columns: Sequence[Any]) -> Path:
    """A map layer of ``geometries`` (in ``crs``), reprojected to ``to_crs`` first if given; the driver by suffix."""
    import geopandas

    frame = geopandas.GeoDataFrame(dict(columns), geometry=list(geometries), crs=crs)
    if to_crs is not None:
        frame = frame.to_crs(to_crs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        frame.to_file(path, layer=layer, engine="pyogrio")
    return path


def random_boxes(count: int, width: int, height: int, seed: int = 0, low: float = 6.0, high: float = 24.0,
                 ) -> np.ndarray:
    """(count, 4) XYXY pixel boxes inside a ``width`` x ``height`` raster."""
    rng = np.random.default_rng(seed)
    w, h = rng.uniform(low, high, count), rng.uniform(low, high, count)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x, y, x + w, y + h], axis=1)
