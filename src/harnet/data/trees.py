"""Real aerial tree-crown data, converted from the sample files shipped in the ``deepforest`` wheel.

The ``deepforest`` package (MIT license) ships a few annotated RGB aerial images (NEON sites) under
``deepforest/data/``, annotated as VOC XML and/or CSV ``image_path,xmin,ymin,xmax,ymax,label``. That is
a small, freely redistributable, single-class real-world detection set that needs no account or large
download, which makes it the real-data counterpart of the synthetic shapes.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from harnet.data.coco_writer import GeneratedDataset
from harnet.data.csv_dataset import parse_csv_annotations
from harnet.data.geo_extra import require
from harnet.data.tiles import TileOptions, make_tiles
from harnet.data.voc import IMAGE_EXTENSIONS, parse_voc_xml
from harnet.utils.image_decode import pil_to_rgb_array

_DATA_PREFIX = "deepforest/data/"
# The sources as a map: each image a GeoTIFF in a projected CRS (UTM zone 12N, where the wheel's YELL scenes
# lie) at the NEON images' 0.1 m pixels, its own made-up origin, SOURCE_SPACING m east of the previous one so
# no two overlap; the boxes a GeoPackage in the same CRS. Made up, but a real projected CRS: the files open in
# QGIS, and they go through `harnet data tiles` exactly as a user's orthomosaic and layer do.
CRS = "EPSG:32612"
GSD = 0.1
ORIGIN = (500_000.0, 4_980_000.0)
SOURCE_SPACING = 1_000.0
# Folder of out_dir holding those GeoTIFFs and the GeoPackage.
SOURCES_DIR = "sources"


@dataclass
class _Source:
    """One annotation file's boxes for one image inside the wheel."""

    annotation: str  # zip member the boxes came from
    image: str  # zip member of the image
    boxes: list[tuple[float, float, float, float]]
    rank: int  # 0 for XML, 1 for CSV: the tie-break when two files annotate an image equally


def _download_wheel(directory: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "deepforest"]
    hint = "download it yourself (pip download --no-deps deepforest) and pass wheel=PATH (--wheel PATH)"
    try:
        subprocess.run(
            [*command, "-d", str(directory)], check=True, capture_output=True, text=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        last = detail.strip().splitlines()[-1] if detail.strip() else type(exc).__name__
        raise RuntimeError(f"could not download the deepforest wheel ({last}); {hint}") from exc
    wheels = sorted(directory.glob("deepforest-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip did not produce a deepforest wheel in {directory}; {hint}")
    return wheels[-1]


def _resolve_image(names: set[str], folder: str, filename: str) -> str | None:
    """Zip member for ``filename``; the same stem with another image extension if that is what ships."""
    exact = f"{folder}{PurePosixPath(filename).name}"
    if exact in names:
        return exact
    stem = PurePosixPath(filename).stem
    for candidate in sorted(n for n in names if n.startswith(folder) and PurePosixPath(n).stem == stem):
        if PurePosixPath(candidate).suffix.lower() in IMAGE_EXTENSIONS:
            return candidate
    return None


def _collect_sources(archive: zipfile.ZipFile, label: str) -> dict[str, _Source]:
    """Pick one annotation file per image, keyed by image stem.

    The wheel annotates some images several times (XML and CSV, PNG and TIF copies of the same scene,
    a partial CSV next to a full XML). Using the source with the most boxes avoids both duplicated
    boxes and partial labels; grouping by stem keeps two encodings of one scene from landing in
    different splits. Files that are not annotations (e.g. ``classes.csv``) fail to parse and are skipped.
    """
    names = set(archive.namelist())
    candidates: list[_Source] = []
    for name in sorted(names):
        if not name.startswith(_DATA_PREFIX):
            continue
        folder = name[: name.rindex("/") + 1]
        source = f"{label}:{name}"
        per_image: dict[str, list[tuple[float, float, float, float]]] = {}
        try:
            if name.endswith(".xml"):
                ann = parse_voc_xml(archive.read(name), source)
                if ann.filename is None:
                    continue
                per_image[ann.filename] = [obj.box for obj in ann.objects]
                rank = 0
            elif name.endswith(".csv"):
                for row in parse_csv_annotations(archive.read(name).decode("utf-8").splitlines(), source):
                    per_image.setdefault(row.image, []).extend([row.box] if row.box is not None else [])
                rank = 1
            else:
                continue
        except (ValueError, UnicodeDecodeError):
            continue
        for filename, boxes in per_image.items():
            image = _resolve_image(names, folder, filename)
            if image is not None and boxes:
                candidates.append(_Source(annotation=name, image=image, boxes=boxes, rank=rank))

    chosen: dict[str, _Source] = {}
    for candidate in sorted(candidates, key=lambda c: (-len(c.boxes), c.rank, c.annotation)):
        chosen.setdefault(PurePosixPath(candidate.image).stem, candidate)
    return chosen


def convert_trees(
    out_dir: str | Path,
    wheel: str | Path | None = None,
    tile: int = 400,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> GeneratedDataset:
    """Convert deepforest's annotated sample images into a tiled, single-class COCO dataset.

    ``wheel`` is a local ``deepforest-*.whl``; when ``None`` it is fetched with ``pip download`` into a
    temporary folder (a ``RuntimeError`` explains how to pass one if that fails). Images and annotations
    are read straight from the zip. All tree labels (``Tree``, ``Alive``, ``Dead``) become the one
    category ``tree``.

    The sources become what a remote-sensing user holds: one GeoTIFF per image and a GeoPackage of the crowns
    (``out_dir/sources/``, see :data:`CRS`), and those go through :func:`harnet.data.tiles.make_tiles`, the
    code of ``harnet data tiles``: the same grid as ``predict --tile``, boxes cut by a tile edge kept clipped
    when at least half of their area is in the tile, tiles without a box skipped (in these sources an empty
    region is more likely unannotated than tree-free). The val split is by whole source image (``split="rasters"``:
    neighbouring tiles of one scene are strongly correlated, and the wheel's scenes are few and unequal): the
    sources whose tiles come closest to ``val_fraction`` of all, ties broken by ``seed``. Layout and
    return value are as for :func:`~harnet.data.shapes.generate_shapes`; the
    tiles are GeoTIFFs (``*.tif``).
    """
    TileOptions(size=tile, val=val_fraction, seed=seed).check()
    if wheel is None:
        with tempfile.TemporaryDirectory(prefix="harnet-deepforest-") as tmp:
            return _convert(_download_wheel(Path(tmp)), Path(out_dir), tile, val_fraction, seed)
    wheel = Path(wheel)
    if not wheel.is_file():
        raise FileNotFoundError(f"deepforest wheel not found: {wheel}")
    return _convert(wheel, Path(out_dir), tile, val_fraction, seed)


def _write_sources(archive: zipfile.ZipFile, sources: dict[str, _Source], folder: Path) -> tuple[list[Path], Path]:
    """Each source image as a GeoTIFF in :data:`CRS` (its own made-up origin, :data:`GSD` m pixels) and all
    boxes as one GeoPackage layer of polygons in the same CRS, class ``tree``; returns (rasters, layer)."""
    rasterio = require("rasterio", "harnet data trees")
    geopandas, shapely = require("geopandas", "harnet data trees"), require("shapely", "harnet data trees")
    folder.mkdir(parents=True, exist_ok=True)
    rasters, polygons, names = [], [], []
    for k, stem in enumerate(sorted(sources)):
        source = sources[stem]
        with Image.open(io.BytesIO(archive.read(source.image))) as image:
            pixels = (pil_to_rgb_array(image) * 255.0 + 0.5).astype(np.uint8)
        height, width = pixels.shape[:2]
        left, top = ORIGIN[0] + k * SOURCE_SPACING, ORIGIN[1]
        path = folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', stem)}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8", crs=CRS,
                           transform=rasterio.Affine(GSD, 0.0, left, 0.0, -GSD, top), compress="deflate") as out:
            out.write(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        rasters.append(path)
        for x0, y0, x1, y1 in source.boxes:
            if x1 > x0 and y1 > y0:  # the wheel's few degenerate boxes are dropped, as clip_valid_boxes did
                polygons.append(shapely.box(left + x0 * GSD, top - y1 * GSD, left + x1 * GSD, top - y0 * GSD))
                names.append(stem)
    layer = folder / "crowns.gpkg"
    if layer.exists():
        layer.unlink()
    frame = geopandas.GeoDataFrame({"class": ["tree"] * len(names), "source": names}, geometry=polygons, crs=CRS)
    frame.to_file(layer, layer="crowns", engine="pyogrio")
    return rasters, layer


def _convert(wheel: Path, out_dir: Path, tile: int, val_fraction: float, seed: int) -> GeneratedDataset:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise ValueError(f"{wheel}: not a wheel (zip) file") from None
    with archive:
        sources = _collect_sources(archive, str(wheel))
        if not sources:
            raise ValueError(f"{wheel}: no annotated images under {_DATA_PREFIX}")
        rasters, layer = _write_sources(archive, sources, out_dir / SOURCES_DIR)
    options = TileOptions(size=tile, val=val_fraction, seed=seed, label_field="class", split="rasters")
    return make_tiles(rasters, layer, out_dir, options).dataset
