"""``harnet predict MODEL RASTERS... --tile SIZE``: rasters of any size predicted window by window, with
georeferenced outputs, for every backend.

Per input ``<stem>``: the detections (pixel boxes) join ``detections.json`` as in plain prediction,
``<stem>_pred.png`` is an overview of the raster (at most :data:`OVERVIEW_SIDE` px on its long side) with
the boxes drawn, and a raster with a CRS also gets ``<stem>.gpkg`` (its CRS) and ``<stem>.geojson``
(lon/lat). A raster without a CRS, or a machine without the ``[geo]`` extra, gets the pixel outputs and a
note saying why there is no map output.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.draw import draw_detections
from harnet.deploy.geo_output import geo_available, preload_geo, write_geo_outputs
from harnet.deploy.predictor import Predictor, TiledResult
from harnet.deploy.raster import Raster
from harnet.deploy.report import PredictReport, output_stems
from harnet.deploy.tiling import window_grid
from harnet.utils.atomic import atomic_file
from harnet.utils.errors import one_line

OVERVIEW_SIDE = 2048
# zlib level of the overview PNG: level 1 writes a photo-like picture several times faster than PIL's
# default 6, for a file a few percent larger.
PNG_COMPRESS_LEVEL = 1


def window_bar(total: int, name: str, progress: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar over the windows when tqdm is installed (the torch-free runtime may lack it), else None."""
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="window", desc=name, leave=False)


def summary(path: Path | str, result: TiledResult) -> str:
    """One line: windows predicted, skipped as nodata, unreadable; what the merge did."""
    return (f"{path}: {result.windows} windows ({result.empty_windows} all nodata, not predicted), "
            f"{result.cut_dropped} cut boxes dropped, {result.merged} duplicates merged")


def predict_rasters(
    predictor: Predictor, paths: Sequence[Path], out_dir: Path | None, score_thresh: float, tile: int,
    overlap: float, bands: tuple[int, ...] | None = None, progress: bool = False,
    report: PredictReport | None = None, stems: Sequence[str] | None = None,
) -> PredictReport:
    """Tiled prediction of each file; an unreadable file is listed in ``skipped``, an unreadable window too
    (the raster's other windows are still predicted and written), and neither stops the other inputs."""
    report = report if report is not None else PredictReport()
    if out_dir is not None and paths:
        preload_geo()
    for path, stem in zip(paths, stems or output_stems(paths)):
        try:
            raster = predictor.open_raster(path, bands)
        except Exception as e:
            report.skip(path, e)
            continue
        try:
            _predict_raster(predictor, raster, path, stem, out_dir, score_thresh, tile, overlap, progress, report)
        except Exception as e:  # a raster that fails as a whole: reported, the rest still processed
            report.skip(path, e)
        finally:
            raster.close()
    return report


def _predict_raster(predictor: Predictor, raster: Raster, path: Path, stem: str, out_dir: Path | None,
                    score_thresh: float, tile: int, overlap: float, progress: bool, report: PredictReport) -> None:
    """One raster: its windows predicted and merged, its detections reported, its pictures and maps written."""
    windows = len(window_grid(raster.width, raster.height, tile, overlap, predictor.min_tile))
    bar = window_bar(windows, str(path), progress)
    try:
        result = predictor.predict_tiled(raster, tile, overlap, score_thresh,
                                         progress=bar.update if bar is not None else None,
                                         overview_side=OVERVIEW_SIDE if out_dir is not None else None)
    finally:
        if bar is not None:
            bar.close()
    report_tiled(predictor, raster, path, stem, out_dir, result, report)


def report_tiled(predictor: Predictor, raster: Raster, path: Path, stem: str, out_dir: Path | None,
                 result: TiledResult, report: PredictReport) -> None:
    """A raster's tiled result, however it was predicted (here, or window batches on dask workers merged by
    the caller): its detections and notes into ``report``, its picture and maps into ``out_dir``."""
    report.add(path, result.detections, predictor.category_ids, size=(raster.width, raster.height))
    report.notes.append(summary(path, result))
    if result.unreadable:
        report.skip(path, f"{len(result.unreadable)} of {result.windows} windows unreadable, the rest predicted "
                          f"(first: {result.unreadable[0]})")
    if out_dir is not None and result.overview is not None:
        _write_outputs(predictor, raster, result.detections, result.overview, out_dir, stem, report)


def _write_outputs(predictor: Predictor, raster: Raster, det: dict[str, Any], picture: np.ndarray, out_dir: Path,
                   stem: str, report: PredictReport) -> None:
    """The overview picture (windows that could not be read stay black) and the map outputs of one raster;
    a failure of the maps is reported, and the raster's detections (already in the report) are kept."""
    path = raster.path
    scale = picture.shape[-1] / raster.width
    drawn = draw_detections(picture, det["boxes"] * scale, det["labels"].tolist(), det["scores"].tolist(),
                            predictor.class_names)
    with atomic_file(out_dir / f"{stem}_pred.png") as f:
        drawn.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    if raster.crs is None or raster.transform is None:
        why = raster.georef_note or "no CRS"
        report.notes.append(f"{path}: {why}; pixel outputs only (detections.json, {stem}_pred.png)")
    elif not geo_available():
        report.notes.append(f"{path}: has a CRS, but no GeoPackage/GeoJSON without geopandas and pyogrio "
                            '(pip install "harnet[geo]")')
    else:
        try:
            _, note = write_geo_outputs(out_dir, stem, det, predictor.class_names, raster.crs, raster.transform)
        except Exception as e:  # a CRS or driver problem: the pixel outputs stand, the map is reported
            report.skip(path, f"map outputs not written ({one_line(e)})")
            return
        if note:
            report.notes.append(f"{path}: {note}")
