"""``harnet data tiles``: training tiles cut from rasters under a map layer of labels, as a COCO dataset.

From what a remote-sensing user holds (GeoTIFFs, and objects drawn in QGIS as a GeoPackage or Shapefile) to
what ``harnet train`` reads (``DIR/{train,val}/`` + ``DIR/annotations/instances_{train,val}.json``, one
category per class name, read with ``data.format: coco``):

1. the labels become boxes in each raster's pixels (:mod:`harnet.data.gis_labels`: reprojection, repairs,
   points, the one-line errors);
2. each raster is cut on the window grid of tiled prediction (:func:`harnet.deploy.tiling.window_grid`): a
   model sees in training exactly the windows ``predict --tile`` will show it. A box cut by a tile edge is kept,
   clipped, when at least ``min_visible`` of its area lies in the tile (less of an object teaches the model
   to fire on fragments), else dropped there and counted;
3. a tile whose every pixel is nodata is never written; a tile no box touches is written only for the
   ``empty`` fraction of such tiles (seeded): in hand-drawn layers an empty region is more often unlabelled
   than empty, so negatives are a choice. A tile holding only parts of boxes too small to keep is no
   negative (it shows objects): it is not written;
4. the val split is spatial (:mod:`harnet.data.spatial_split`): whole blocks of neighbouring tiles (or, with
   ``split="rasters"``, whole rasters), and no val tile shares a pixel with a train tile;
5. each tile is a GeoTIFF holding the window's CRS and transform and all of the raster's bands, data type and
   nodata value (and mask), so it opens in QGIS at its place and loses no band a model could train on;
6. a summary (:class:`TilesSummary`, printed by the command) and ``DIR/tiles.png``, the grid over the rasters;
   every repaired or dropped feature is listed in ``DIR/label_issues.txt``.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harnet.data.coco_writer import GeneratedDataset, Split, coco_annotation, dataset_paths, write_splits
from harnet.data.geo_extra import require
from harnet.data.gis_labels import (
    LabelIssues,
    MapLabels,
    PixelLabels,
    RasterGeo,
    crs_name,
    is_pixel_csv,
    place_on_raster,
    read_map_labels,
    read_pixel_labels,
)
from harnet.data.spatial_split import (
    DROPPED,
    TRAIN,
    VAL,
    GridTiles,
    choose_val_blocks,
    choose_val_rasters,
    drop_straddling,
)
from harnet.data.tiles_picture import Panel, draw_tile_map
from harnet.deploy.raster import Overview
from harnet.deploy.tiling import MIN_TILE, Grid, Window, window_grid
from harnet.utils.errors import first_line

OUTSIDE = "outside every raster"
ISSUES_FILE = "label_issues.txt"
PICTURE_FILE = "tiles.png"
# Long side of each raster's overview in the picture.
OVERVIEW_SIDE = 1024
# Relative slack of the area comparisons: a box mapped from map coordinates carries rounding far below a pixel,
# which must not flip a box lying exactly half in a tile (or exactly inside it) to the other side of the rule.
AREA_TOLERANCE = 1e-6
# Issue lines shown in the summary; the rest are in ISSUES_FILE.
SHOWN_ISSUES = 5


@dataclass(frozen=True)
class TileOptions:
    """The options of ``harnet data tiles`` (see its ``--help``)."""

    size: int = 400
    overlap: float = 0.0
    val: float = 0.2
    empty: float = 0.0
    min_visible: float = 0.5
    point_size: float | None = None
    label_field: str | None = None
    layer: str | None = None
    seed: int = 0
    block: int | None = None  # tiles per block side of the val split; None: automatic
    split: Literal["blocks", "rasters"] = "blocks"  # val by blocks of tiles, or whole rasters

    def check(self) -> None:
        """A one-line error for a value that cannot work."""
        if self.size < MIN_TILE:
            raise ValueError(f"--size {self.size}: at least {MIN_TILE} px (the model's smallest window)")
        if not 0.0 <= self.val < 1.0:
            raise ValueError(f"--val {self.val:g}: a fraction of the tiles, at least 0 and below 1")
        if not 0.0 <= self.empty <= 1.0:
            raise ValueError(f"--empty {self.empty:g}: a fraction of the label-free tiles, from 0 to 1")
        if not 0.0 < self.min_visible <= 1.0:
            raise ValueError(f"--min-visible {self.min_visible:g}: a fraction of a box's area, above 0 and at most 1")
        if self.point_size is not None and not self.point_size > 0:
            raise ValueError(f"--point-size {self.point_size:g}: a side in metres, above 0")
        if self.block is not None and self.block < 1:
            raise ValueError(f"--block {self.block}: a block is at least one tile")
        if self.split not in ("blocks", "rasters"):
            raise ValueError(f"--split {self.split}: blocks (of neighbouring tiles) or rasters (whole rasters)")


@dataclass
class RasterReport:
    """One raster: what it is and what became of its tiles."""

    path: Path
    width: int
    height: int
    bands: int
    dtype: str
    crs: str
    nodata: float | None
    reprojected: bool = False
    boxes: int = 0  # label boxes overlapping the raster
    tiles: int = 0  # windows of the grid
    train: int = 0
    val: int = 0
    empty: int = 0  # written tiles without boxes (both splits)
    nodata_tiles: int = 0
    straddling: int = 0

    def line(self) -> str:
        nodata = "" if self.nodata is None else f", nodata {self.nodata:g}"
        return (f"{self.path.name}: {self.width}x{self.height} px, {self.bands} band(s) {self.dtype}, {self.crs}"
                f"{nodata}: {self.tiles} windows -> {self.train} train, {self.val} val")


@dataclass
class TilesSummary:
    """What ``harnet data tiles`` did: the one-screen summary (:meth:`lines`) as data."""

    out: Path
    labels: str  # the labels' source (file, layer)
    labels_crs: str
    rasters: list[RasterReport]
    features_read: int
    features_used: int  # features (rows) giving a box on some raster
    reprojected: int  # features reprojected to the CRS of a raster they lie on
    dropped: dict[str, int]  # features dropped, by reason
    repaired: int
    boxes: dict[str, dict[str, int]]  # class -> split -> boxes in written tiles
    cut_kept: int  # boxes cut by a tile edge and kept (clipped)
    cut_dropped: int  # boxes cut by a tile edge with less than min_visible in the tile, dropped there
    tiles: dict[str, int]  # train, val, empty_train, empty_val, no_labels, nodata, straddling
    options: TileOptions
    block: int
    blocks: int
    val_blocks: int
    dataset: GeneratedDataset
    picture: Path
    issues_file: Path | None
    issue_lines: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary, one screen."""
        o, t = self.options, self.tiles
        out = [f"harnet data tiles: {len(self.rasters)} raster(s) -> {self.out}"]
        out += [f"  {r.line()}" for r in self.rasters]
        moved = f", {self.reprojected} reprojected to the rasters' CRS" if self.reprojected else ""
        out.append(f"labels: {self.labels} ({self.labels_crs}): {self.features_read} features read, "
                   f"{self.features_used} on a raster{moved}")
        if self.dropped or self.repaired:
            parts = [f"{n} {reason}" for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])]
            listed = f" (each listed in {self.issues_file})" if self.issues_file else ""
            out.append(f"  dropped: {', '.join(parts) or 'none'}; repaired: {self.repaired}{listed}")
            out += [f"    {line}" for line in self.issue_lines[:SHOWN_ISSUES]]
            if len(self.issue_lines) > SHOWN_ISSUES:
                out.append(f"    ... {len(self.issue_lines) - SHOWN_ISSUES} more")
        per_class = ", ".join(f"{name} {c['train']} train / {c['val']} val" for name, c in self.boxes.items())
        out.append(f"boxes: {per_class or 'none'}; cut by a tile edge: {self.cut_kept} kept clipped, "
                   f"{self.cut_dropped} dropped (under {o.min_visible:g} of the box in the tile)")
        out.append(f"tiles of {o.size} px (overlap {o.overlap:g}): {t['train']} train, {t['val']} val "
                   f"(label-free among them: {t['empty_train']} train, {t['empty_val']} val; --empty {o.empty:g}); "
                   f"not written: {t['no_labels']} label-free, {t['nodata']} all nodata, "
                   f"{t['straddling']} straddling the val border")
        if o.split == "rasters":
            out.append(f"split: whole rasters, seed {o.seed}: {self.val_blocks} of {self.blocks} rasters val "
                       f"(--val {o.val:g} of the labelled tiles)")
        else:
            out.append(f"split: spatial, blocks of {self.block}x{self.block} tiles, seed {o.seed}: {self.val_blocks} "
                       f"of {self.blocks} blocks val (--val {o.val:g} of the labelled tiles)")
        out.append(f"picture: {self.picture}  train: {self.dataset['train_ann']}  val: {self.dataset['val_ann']}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "labels": self.labels, "labels_crs": self.labels_crs,
            "rasters": [{**vars(r), "path": str(r.path)} for r in self.rasters],
            "features_read": self.features_read, "features_used": self.features_used,
            "reprojected": self.reprojected, "dropped": dict(self.dropped), "repaired": self.repaired,
            "boxes": self.boxes, "cut_kept": self.cut_kept, "cut_dropped": self.cut_dropped, "tiles": self.tiles,
            "options": vars(self.options), "block": self.block, "blocks": self.blocks, "val_blocks": self.val_blocks,
            "dataset": {k: str(v) if isinstance(v, Path) else v for k, v in self.dataset.items()},
            "picture": str(self.picture), "issues_file": str(self.issues_file) if self.issues_file else None,
        }


@dataclass
class _Raster:
    """A raster being tiled: its metadata, grid, boxes and per-window state."""

    geo: RasterGeo
    report: RasterReport
    has_mask: bool  # nodata value or a mask band: windows are read masked
    eight_bit: bool
    stem: str
    grid: Grid | None = None
    labels: PixelLabels | None = None
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # per window (row-major over the grid): kept boxes (feature index, clipped XYXY in window pixels)
    window_boxes: list[list[tuple[int, tuple[float, float, float, float]]]] = field(default_factory=list)
    nodata: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # some box overlaps the window
    overview: np.ndarray | None = None
    valid: np.ndarray | None = None


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    rasterio = require("rasterio")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            ds = rasterio.open(path)
        except Exception as e:
            raise ValueError(f"{path}: not a raster GDAL can read ({first_line(e)})") from None
        with ds:
            yield ds


def _describe(path: Path) -> _Raster:
    """Open ``path`` once for its metadata."""
    pyproj = require("pyproj")
    if not path.is_file():
        raise ValueError(f"{path}: raster file not found")
    with _open(path) as ds:
        if ds.count < 1:
            raise ValueError(f"{path}: a raster without bands")
        if len(set(ds.dtypes)) > 1:
            raise ValueError(f"{path}: bands of different data types ({', '.join(sorted(set(ds.dtypes)))}); "
                             "a tile holds one (gdal_translate -ot TYPE)")
        crs = pyproj.CRS.from_wkt(ds.crs.to_wkt()) if ds.crs is not None else None
        t = ds.transform
        geo = RasterGeo(path, int(ds.width), int(ds.height), crs, (t.a, t.b, t.c, t.d, t.e, t.f))
        has_mask = ds.nodata is not None or any("all_valid" not in [f.name for f in flags]
                                                for flags in ds.mask_flag_enums)
        report = RasterReport(path, geo.width, geo.height, int(ds.count), str(ds.dtypes[0]), crs_name(crs),
                              None if ds.nodata is None else float(ds.nodata))
        return _Raster(geo, report, has_mask, ds.dtypes[0] == "uint8", "")


def _stems(paths: Sequence[Path]) -> list[str]:
    """File-name-safe tile prefixes, one per raster, distinct even for rasters of the same name."""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem) for p in paths]
    counts = Counter(safe)
    seen: Counter[str] = Counter()
    out = []
    for stem in safe:
        seen[stem] += 1
        out.append(stem if counts[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def boxes_in_windows(boxes: np.ndarray, grid: Grid, min_visible: float,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Each box in each window it overlaps with a positive area: ``(window, box, clipped)`` for the pairs kept
    (``window`` row-major over the grid, ``clipped`` (k, 4) XYXY in the window's pixels), the windows any box
    overlaps (kept or not), and the counts of cut boxes kept and dropped (less than ``min_visible`` of the
    box's area in the window)."""
    xs, ys = np.asarray(grid.xs), np.asarray(grid.ys)
    w, h = grid.win_w, grid.win_h
    b = boxes.astype(np.float64).reshape(-1, 4)
    ilo = np.searchsorted(xs, b[:, 0] - w, side="right")
    ihi = np.searchsorted(xs, b[:, 2], side="left")
    jlo = np.searchsorted(ys, b[:, 1] - h, side="right")
    jhi = np.searchsorted(ys, b[:, 3], side="left")
    nx, ny = np.maximum(ihi - ilo, 0), np.maximum(jhi - jlo, 0)
    per = nx * ny
    owner = np.repeat(np.arange(len(b)), per)
    k = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    col = ilo[owner] + k % np.maximum(nx[owner], 1)
    row = jlo[owner] + k // np.maximum(nx[owner], 1)
    origin = np.stack([xs[col], ys[row], xs[col], ys[row]], axis=1).astype(np.float64)
    shifted = b[owner] - origin
    clipped = np.stack([np.clip(shifted[:, 0], 0, w), np.clip(shifted[:, 1], 0, h),
                        np.clip(shifted[:, 2], 0, w), np.clip(shifted[:, 3], 0, h)], axis=1)
    area = (b[owner, 2] - b[owner, 0]) * (b[owner, 3] - b[owner, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    positive = inside > 0
    cut = positive & (inside < area * (1.0 - AREA_TOLERANCE))
    keep = positive & (inside >= min_visible * area * (1.0 - AREA_TOLERANCE))
    window = row * len(xs) + col
    return (window[keep], owner[keep], clipped[keep], np.unique(window[positive]), int((cut & keep).sum()),
            int((cut & ~keep).sum()))


def _window(grid: Grid, index: int) -> Window:
    row, col = divmod(index, len(grid.xs))
    return Window(grid.xs[col], grid.ys[row], grid.win_w, grid.win_h)


def _rio_window(window: Window) -> Any:
    return require("rasterio.windows").Window(window.x, window.y, window.width, window.height)


def _scan(raster: _Raster) -> None:
    """Read every window once: which are entirely nodata, and the overview samples for the picture."""
    assert raster.grid is not None
    grid = raster.grid
    bands = [1, 2, 3] if raster.report.bands >= 3 else [1]
    overview = Overview(grid.width, grid.height, OVERVIEW_SIDE, bands=len(bands), raw=True)  # stretched when drawn
    mask = Overview(grid.width, grid.height, OVERVIEW_SIDE, bands=1, raw=True)
    nodata = np.zeros(len(grid), dtype=bool)
    with _open(raster.geo.path) as ds:
        for index in range(len(grid)):
            window = _window(grid, index)
            try:
                data = ds.read(window=_rio_window(window), masked=raster.has_mask)
            except Exception as e:
                raise ValueError(f"{raster.geo.path}: window x={window.x} y={window.y} unreadable "
                                 f"({first_line(e)})") from None
            invalid = np.asarray(np.ma.getmaskarray(data).all(axis=0), dtype=bool)
            nodata[index] = bool(invalid.all())
            overview.add(window, np.ma.getdata(data)[[b - 1 for b in bands]].astype(np.float32))
            mask.add(window, (~invalid)[None].astype(np.float32))
    raster.nodata = nodata
    raster.overview = overview.image
    raster.valid = mask.image[0] > 0.5


def _write_tile(ds: Any, window: Window, path: Path) -> None:
    """The window as a GeoTIFF: all bands, the data type, nodata, CRS and the window's transform."""
    rasterio = require("rasterio")
    rio_window = _rio_window(window)
    data = ds.read(window=rio_window)
    profile: dict[str, Any] = {"driver": "GTiff", "width": window.width, "height": window.height,
                               "count": ds.count, "dtype": ds.dtypes[0], "compress": "deflate"}
    if ds.nodata is not None:
        profile["nodata"] = ds.nodata
    if ds.crs is not None:
        a, b, c, d, e, f = (ds.transform[k] for k in range(6))
        profile["crs"] = ds.crs
        profile["transform"] = rasterio.Affine(a, b, c + a * window.x + b * window.y,
                                               d, e, f + d * window.x + e * window.y)
    per_dataset_mask = ds.nodata is None and any("per_dataset" in [f.name for f in flags]
                                                 for flags in ds.mask_flag_enums)
    with warnings.catch_warnings(), rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a tile of a plain image
        with rasterio.open(path, "w", **profile) as out:
            out.write(data)
            for band, description in enumerate(ds.descriptions, start=1):
                if description:
                    out.set_band_description(band, description)
            if per_dataset_mask:
                out.write_mask(ds.dataset_mask(window=rio_window))


def _choose_empty(candidates: list[tuple[int, int]], fraction: float, rng: np.random.Generator) -> set[tuple[int, int]]:
    """``round(fraction * n)`` of the ``(raster, window)`` candidates, drawn with ``rng``."""
    count = round(fraction * len(candidates))
    if count == 0:
        return set()
    picked = rng.permutation(len(candidates))[:count]
    return {candidates[i] for i in picked.tolist()}


def _labels_for(rasters: list[_Raster], labels: str | Path, options: TileOptions,
                ) -> tuple[str, str, int, LabelIssues]:
    """Place the labels on every raster (``raster.labels``); returns (source, its CRS, features read, issues)."""
    issues = LabelIssues()
    if is_pixel_csv(labels):
        if options.label_field or options.layer or options.point_size:
            raise ValueError(f"{labels}: pixel labels (CSV) take their class from the label column; --label-field, "
                             "--layer and --point-size are for map layers")
        placed, read = read_pixel_labels(labels, [r.geo.path for r in rasters])
        for raster in rasters:
            raster.labels = placed[raster.geo.path]
        return str(labels), "pixel coordinates", read, issues
    layer: MapLabels = read_map_labels(labels, options.layer, options.label_field)
    for raster in rasters:
        raster.labels = place_on_raster(layer, raster.geo, options.point_size)
        raster.report.reprojected = raster.labels.reprojected
    return layer.source, crs_name(layer.crs), layer.read, layer.issues


def _on_raster(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n,) bool: the box overlaps the raster with a positive area (all finite)."""
    finite = np.isfinite(boxes).all(axis=1)
    return (finite & (np.minimum(boxes[:, 2], width) > np.maximum(boxes[:, 0], 0))
            & (np.minimum(boxes[:, 3], height) > np.maximum(boxes[:, 1], 0)))


def make_tiles(rasters: Sequence[str | Path], labels: str | Path, out: str | Path,
               options: TileOptions | None = None) -> TilesSummary:
    """Cut ``rasters`` into a COCO dataset under ``out`` from the ``labels`` layer (the module docstring)."""
    options = options or TileOptions()
    options.check()
    if not rasters:
        raise ValueError("no raster given")
    paths = [Path(p) for p in rasters]
    if len(set(p.resolve() for p in paths)) < len(paths):
        raise ValueError("a raster is given twice")
    out = Path(out)
    work = [_describe(p) for p in paths]
    for raster, stem in zip(work, _stems(paths), strict=True):
        raster.stem = stem
    source, labels_crs, features_read, issues = _labels_for(work, labels, options)

    # Which features lie on a raster; the error when none does.
    used: set[Any] = set()
    moved: set[Any] = set()  # features reprojected to the CRS of a raster they lie on
    for raster in work:
        assert raster.labels is not None
        on = _on_raster(raster.labels.boxes, raster.geo.width, raster.geo.height)
        raster.report.boxes = int(on.sum())
        used.update(raster.labels.fids[on].tolist())
        if raster.labels.reprojected:
            moved.update(raster.labels.fids[on].tolist())
    all_fids = {f for r in work if r.labels is not None for f in r.labels.fids.tolist()}
    for fid in sorted(all_fids - used, key=str):
        issues.drop(source, fid, OUTSIDE)
    names = ", ".join(str(p) for p in paths)
    if not all_fids:
        raise ValueError(f"{source}: no usable label for {names} (a CSV row names its image by path or file name)"
                         if labels_crs == "pixel coordinates" else f"{source}: no usable feature")
    if not used:
        where = "; ".join(f"{r.geo.path.name} covers {_bounds_text(r)}" for r in work)
        raise ValueError(f"{source}: none of its {len(all_fids)} usable features lies on {names} "
                         f"(the layer says {labels_crs}; {where}): a layer in the wrong CRS?")
    class_names = sorted({c for r in work if r.labels is not None for c in r.labels.classes})
    class_index = {name: k for k, name in enumerate(class_names)}

    # Windows, boxes per window, nodata.
    cut_kept = cut_dropped = 0
    grid_tiles: list[GridTiles] = []
    for raster in work:
        assert raster.labels is not None
        grid = window_grid(raster.geo.width, raster.geo.height, options.size, options.overlap)
        raster.grid = grid
        raster.class_ids = np.asarray([class_index[c] for c in raster.labels.classes], dtype=np.int64)
        in_window, owner, clipped, touched, kept, dropped = boxes_in_windows(raster.labels.boxes, grid,
                                                                             options.min_visible)
        cut_kept += kept
        cut_dropped += dropped
        raster.touched = np.zeros(len(grid), dtype=bool)
        raster.touched[touched] = True
        raster.window_boxes = [[] for _ in range(len(grid))]
        for w, o, box in zip(in_window.tolist(), owner.tolist(), clipped.tolist(), strict=True):
            raster.window_boxes[w].append((o, (box[0], box[1], box[2], box[3])))
        _scan(raster)
        raster.report.tiles = len(grid)
        raster.report.nodata_tiles = int(raster.nodata.sum())
        count = len(grid)
        labelled = np.array([bool(raster.window_boxes[i]) for i in range(count)], dtype=bool) & ~raster.nodata
        grid_tiles.append(GridTiles(grid, np.arange(count) % len(grid.xs), np.arange(count) // len(grid.xs),
                                    labelled))
    if not any(t.labelled.any() for t in grid_tiles):
        raise ValueError(f"{source}: every box lies on nodata pixels of {', '.join(str(p) for p in paths)}")

    # The split, the negatives, the tiles straddling the val border.
    split = (choose_val_rasters(grid_tiles, options.val, options.seed) if options.split == "rasters"
             else choose_val_blocks(grid_tiles, options.val, options.seed, options.block))
    rng = np.random.default_rng([options.seed, 1])
    written: list[np.ndarray] = []
    empties: set[tuple[int, int]] = set()
    for part in (TRAIN, VAL):
        candidates = [(r, i) for r, t in enumerate(grid_tiles) for i in range(len(t.labelled))
                      if split.splits[r][i] == part and not work[r].touched[i] and not work[r].nodata[i]]
        empties |= _choose_empty(candidates, options.empty, rng)
    final: list[np.ndarray] = []
    for r, t in enumerate(grid_tiles):
        chosen = t.labelled.copy()
        chosen[[i for (rr, i) in empties if rr == r]] = True
        written.append(chosen)
        final.append(drop_straddling(t, split.splits[r], chosen))

    # The tiles and their annotations.
    train_dir, val_dir, _, _ = dataset_paths(out)
    splits: dict[str, Split] = {"train": ([], []), "val": ([], [])}
    boxes_per_class = {name: {"train": 0, "val": 0} for name in class_names}
    tiles = {"train": 0, "val": 0, "empty_train": 0, "empty_val": 0, "no_labels": 0, "nodata": 0, "straddling": 0}
    image_id = 0
    panels: list[Panel] = []
    for r, raster in enumerate(work):
        assert raster.grid is not None and raster.labels is not None
        grid, report = raster.grid, raster.report
        states: list[tuple[int, int, int, int, str]] = []
        with _open(raster.geo.path) as ds:
            for i in range(len(grid)):
                window = _window(grid, i)
                state = final[r][i]
                if raster.nodata[i]:
                    tiles["nodata"] += 1
                    states.append((window.x, window.y, window.width, window.height, "nodata"))
                    continue
                if not written[r][i]:
                    tiles["no_labels"] += 1
                    continue
                if state == DROPPED:
                    tiles["straddling"] += 1
                    report.straddling += 1
                    states.append((window.x, window.y, window.width, window.height, "dropped"))
                    continue
                name = "val" if state == VAL else "train"
                states.append((window.x, window.y, window.width, window.height, name))
                image_id += 1
                file_name = f"{raster.stem}_x{window.x}_y{window.y}.tif"
                _write_tile(ds, window, (val_dir if name == "val" else train_dir) / file_name)
                images, annotations = splits[name]
                images.append({"id": image_id, "file_name": file_name, "width": window.width,
                               "height": window.height, "raster": str(raster.geo.path),
                               "window": [window.x, window.y, window.width, window.height]})
                for feature, box in raster.window_boxes[i]:
                    category = int(raster.class_ids[feature])
                    annotations.append(coco_annotation(len(annotations) + 1, image_id, category + 1, box))
                    boxes_per_class[class_names[category]][name] += 1
                tiles[name] += 1
                setattr(report, name, getattr(report, name) + 1)
                if not raster.window_boxes[i]:
                    tiles[f"empty_{name}"] += 1
                    report.empty += 1
        assert raster.overview is not None and raster.valid is not None
        on = _on_raster(raster.labels.boxes, grid.width, grid.height)
        panels.append(Panel(raster.geo.path.name, raster.overview, raster.valid, grid.width, grid.height, states,
                            raster.labels.boxes[on],
                            f"{raster.geo.path.name}: train {report.train} (blue), val {report.val} (orange), "
                            f"straddling {report.straddling} (red), all nodata {report.nodata_tiles} (grey); "
                            "boxes yellow"))

    categories = [{"id": k + 1, "name": name, "supercategory": name} for k, name in enumerate(class_names)]
    dataset = write_splits(out, splits, categories, f"harnet data tiles from {source}")
    picture = draw_tile_map(panels, out / PICTURE_FILE, [r.eight_bit for r in work])
    issues_file = None
    if issues.lines:
        issues_file = out / ISSUES_FILE
        issues_file.write_text("\n".join(issues.lines) + "\n", encoding="utf-8")
    elif (out / ISSUES_FILE).exists():
        (out / ISSUES_FILE).unlink()
    return TilesSummary(out, source, labels_crs, [r.report for r in work], features_read, len(used), len(moved),
                        dict(issues.dropped), issues.repaired, boxes_per_class, cut_kept, cut_dropped, tiles, options,
                        split.block, split.blocks, split.val_blocks, dataset, picture, issues_file, issues.lines)


def _bounds_text(raster: _Raster) -> str:
    """The raster's extent in its CRS, for the all-outside error."""
    a, b, c, d, e, f = raster.geo.transform
    w, h = raster.geo.width, raster.geo.height
    xs = [c, a * w + c, b * h + c, a * w + b * h + c]
    ys = [f, d * w + f, e * h + f, d * w + e * h + f]
    return f"x {min(xs):.6g}..{max(xs):.6g}, y {min(ys):.6g}..{max(ys):.6g} in {raster.geo.crs_name}"
