"""``harnet predict --tile``: rasters of any size predicted window by window, with georeferenced outputs.

Per input ``<stem>``: the detections (pixel boxes) join ``detections.json`` as in plain prediction,
``<stem>_pred.png`` is an overview of the raster (at most :data:`OVERVIEW_SIDE` px on its long side) with
the boxes drawn, and a raster with a CRS also gets ``<stem>.gpkg`` (its CRS) and ``<stem>.geojson``
(lon/lat). A raster without a CRS, or a machine without the ``[geo]`` extra, gets the pixel outputs and a
note saying why there is no map output.
"""

from __future__ import annotations

from pathlib import Path

from harnet.data.raster import open_raster
from harnet.engine.predictor import Detector
from harnet.engine.runfolder import remove_outputs
from harnet.tools.geo_output import geo_available, write_geo_outputs
from harnet.tools.predict import PREDICT_OUTPUTS, PredictReport, draw_detections
from harnet.utils.atomic import atomic_file

OVERVIEW_SIDE = 2048
TILED_OUTPUTS = (*PREDICT_OUTPUTS, "*.gpkg", "*.geojson")


def predict_rasters(
    detector: Detector, paths: list[Path], out_dir: Path | None, score_thresh: float, tile: int,
    overlap: float, bands: tuple[int, ...] | None = None, progress: bool = False,
) -> PredictReport:
    """Tiled prediction of each file; an unreadable file or window is listed in ``skipped``, not fatal."""
    report = PredictReport()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_outputs(out_dir, TILED_OUTPUTS)
    for path in paths:
        try:
            raster = open_raster(path, bands)
            try:
                det = detector.predict_tiled(raster, tile=tile, overlap=overlap, score_thresh=score_thresh,
                                             progress=progress)
                picture = raster.overview(OVERVIEW_SIDE) if out_dir is not None else None
            finally:
                raster.close()
        except Exception as e:  # unreadable file or window: reported, the rest still processed
            report.skip(path, e)
            continue
        report.add(path, det, detector.category_ids)
        if out_dir is None or picture is None:
            continue
        scale = picture.shape[-1] / raster.width
        drawn = draw_detections(picture, det["boxes"] * scale, det["labels"].tolist(), det["scores"].tolist(),
                                detector.class_names)
        with atomic_file(out_dir / f"{path.stem}_pred.png") as f:
            drawn.save(f, format="PNG")
        if raster.crs is None or raster.transform is None:
            report.notes.append(f"{path}: no CRS; pixel outputs only (detections.json, {path.stem}_pred.png)")
        elif not geo_available():
            report.notes.append(f"{path}: has a CRS, but no GeoPackage/GeoJSON without geopandas and pyogrio "
                                '(pip install "harnet[geo]")')
        else:
            write_geo_outputs(out_dir, path.stem, det, detector.class_names, raster.crs, raster.transform)
    if out_dir is not None:
        report.write(out_dir)
    return report
