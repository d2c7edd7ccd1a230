"""Tiled prediction against per-tile prediction on a mosaic of the trees val tiles (issue #20).

Builds a 4 x 3 mosaic (1600 x 1200 px) of the 12 val tiles with its COCO annotations, as a PNG and as a
GeoTIFF (UTM 12N, 0.1 m), and measures:

* AP of per-tile prediction (each 400 px tile alone, boxes shifted into the mosaic) against
  ``predict_tiled(tile=400)`` with overlap 0 and 0.25, and their duplicate pairs (same class, IoU > 0.7,
  both scoring >= 0.3);
* the GeoTIFF's pixel boxes against the PNG's, its GeoPackage polygons against the affine of each pixel box,
  and its GeoJSON against the GeoPackage reprojected to lon/lat;
* a 10,000 x 10,000 px 3-band GeoTIFF (the mosaic repeated) predicted in a child process: peak RSS and Mpx/s,
  against per-window prediction (``Predictor.predict`` on 400 px windows) in Mpx/s.

Any model file runs: ``--run`` is a run folder or checkpoint (PyTorch) or an export (``.onnx``, OpenVINO
``.xml`` or folder), opened by :func:`harnet.tools.predict.open_predictor`, the pipeline ``harnet predict`` runs.

    python benchmarks/tiled_trees.py --run /work/artifacts/trees_cpu --data /work/artifacts/data/trees \\
        --work /tmp/tiled_trees --out docs/results/tiled_trees.json --picture docs/tiled_trees.png [--large 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

MOSAIC_COLS, MOSAIC_ROWS, TILE = 4, 3, 400
ORIGIN = (541000.0, 4977000.0)  # UTM 12N (the YELL site), north-west corner
PIXEL = 0.1
EPSG = 32612


def build_mosaic(data: Path, work: Path) -> tuple[Path, Path, Path, list[dict]]:
    """Mosaic PNG, GeoTIFF and COCO json; the tiles (file, x, y) in mosaic order."""
    import rasterio
    from rasterio.transform import from_origin

    coco = json.loads((data / "annotations" / "instances_val.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[: MOSAIC_COLS * MOSAIC_ROWS]
    mosaic = np.zeros((MOSAIC_ROWS * TILE, MOSAIC_COLS * TILE, 3), dtype=np.uint8)
    tiles, annotations = [], []
    for k, im in enumerate(images):
        x, y = (k % MOSAIC_COLS) * TILE, (k // MOSAIC_COLS) * TILE
        mosaic[y : y + TILE, x : x + TILE] = np.asarray(Image.open(data / "val" / im["file_name"]).convert("RGB"))
        tiles.append({"file": str(data / "val" / im["file_name"]), "x": x, "y": y})
        for a in coco["annotations"]:
            if a["image_id"] == im["id"]:
                bx, by, bw, bh = a["bbox"]
                annotations.append({**a, "id": len(annotations) + 1, "image_id": 1, "bbox": [bx + x, by + y, bw, bh]})
    work.mkdir(parents=True, exist_ok=True)
    png, tif, ann = work / "mosaic.png", work / "mosaic.tif", work / "mosaic.json"
    Image.fromarray(mosaic).save(png)
    with rasterio.open(tif, "w", driver="GTiff", width=mosaic.shape[1], height=mosaic.shape[0], count=3,
                       dtype="uint8", crs=f"EPSG:{EPSG}", transform=from_origin(*ORIGIN, PIXEL, PIXEL),
                       tiled=True) as ds:
        ds.write(mosaic.transpose(2, 0, 1))
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "mosaic.png", "width": mosaic.shape[1],
                                           "height": mosaic.shape[0]}],
                               "annotations": annotations, "categories": coco["categories"]}))
    return png, tif, ann, tiles


def coco_ap(ann: Path, det: dict, category_ids: list[int]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [{"image_id": 1, "category_id": category_ids[int(label)], "score": float(s),
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
               for b, s, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        if not results:
            return 0.0
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 10, 100 * MOSAIC_COLS * MOSAIC_ROWS]  # the 12 tiles' 100 each, on one image
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # IoU .5:.95, recall, class; all areas; the last maxDets
    return float(precision[precision > -1].mean())


def duplicates(det: dict, iou: float = 0.7, min_score: float = 0.3) -> int:
    from harnet.deploy.postprocess import box_iou

    keep = np.asarray(det["scores"]) >= min_score
    boxes, labels = np.asarray(det["boxes"], dtype=np.float32)[keep], np.asarray(det["labels"])[keep]
    m = box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    return int(np.triu((m > iou) & same, k=1).sum())


def per_tile(predictor, tiles: list[dict]) -> dict:  # type: ignore[no-untyped-def]
    parts = []
    for t in tiles:
        (d,) = predictor.predict([t["file"]])
        parts.append((d["boxes"] + np.array([t["x"], t["y"], t["x"], t["y"]], dtype=np.float32), d["scores"],
                      d["labels"]))
    return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(("boxes", "scores", "labels"))}


def tiled(predictor, path: Path, tile: int, overlap: float) -> dict:  # type: ignore[no-untyped-def]
    """``predict_tiled`` of the raster at ``path`` (PIL for a PNG, rasterio for a GeoTIFF): its detections."""
    from harnet.deploy.raster import open_raster

    raster = open_raster(path)
    try:
        return predictor.predict_tiled(raster, tile=tile, overlap=overlap).detections
    finally:
        raster.close()


# Peak memory is the child's VmHWM (its own address space since exec). Not getrusage's ru_maxrss: Linux carries
# that across exec, so a child of this (large) benchmark process would report the parent's peak.
LARGE_SCRIPT = """
import json, sys, time
from harnet.deploy.predict_raster import predict_rasters
from harnet.tools.predict import open_predictor
from pathlib import Path
run, tif, out = sys.argv[1:4]
det = open_predictor(run, threads=2, device="cpu")
Path(out).mkdir(parents=True, exist_ok=True)
start = time.perf_counter()
report = predict_rasters(det, [Path(tif)], Path(out), 0.3, 400, 0.25, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "detections": len(report.detections), "skipped": report.skipped,
                  "peak_rss_mb": next(int(line.split()[1]) for line in open("/proc/self/status")
                                      if line.startswith("VmHWM:")) / 1024}))
"""


def large_raster(mosaic: np.ndarray, path: Path, size: int) -> None:
    """A ``size`` px square 3-band uint8 GeoTIFF of ``mosaic`` repeated: deflate, tiled in 256 px blocks."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    h, w = mosaic.shape[:2]
    reps = np.tile(mosaic, (size // h + 1, size // w + 1, 1))
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                       crs=f"EPSG:{EPSG}", transform=from_origin(*ORIGIN, PIXEL, PIXEL), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as ds:
        for y in range(0, size, 1000):
            ds.write(reps[y : y + 1000, :size].transpose(2, 0, 1), window=Window(0, y, size, min(1000, size - y)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="/tmp/tiled_trees")
    parser.add_argument("--out", default="docs/results/tiled_trees.json")
    parser.add_argument("--picture", default=None)
    parser.add_argument("--large", type=int, default=10000, help="side of the large raster (0: skip)")
    args = parser.parse_args()
    import geopandas as gpd

    from harnet.deploy.geo_output import pixel_to_map
    from harnet.deploy.predict_raster import predict_rasters
    from harnet.tools.predict import open_predictor

    work = Path(args.work)
    png, tif, ann, tiles = build_mosaic(Path(args.data), work)
    detector = open_predictor(args.run, threads=2, device="cpu")
    result: dict = {"command": " ".join(sys.argv), "mosaic": "4 x 3 trees val tiles, 1600 x 1200 px",
                    "model": args.run, "backend": detector.runtime.name}
    found = {"per_tile": per_tile(detector, tiles)}
    for overlap in (0.0, 0.25):
        found[f"tile400_overlap{overlap}"] = tiled(detector, png, TILE, overlap)
    for name, det in found.items():
        result[name] = {"AP": coco_ap(ann, det, detector.category_ids), "detections": len(det["boxes"]),
                        "duplicates_iou0.7_score0.3": duplicates(det),
                        "duplicates_iou0.7_score0.05": duplicates(det, min_score=0.05)}
    base = result["per_tile"]["AP"]
    for name in ("tile400_overlap0.0", "tile400_overlap0.25"):
        result[name]["AP_minus_per_tile"] = result[name]["AP"] - base

    # The GeoTIFF: same pixel boxes as the PNG, polygons at the affine of their pixel boxes, GeoJSON = GeoPackage.
    out = work / "geo"
    out.mkdir(parents=True, exist_ok=True)
    predict_rasters(detector, [tif], out, 0.0, TILE, 0.25)
    geo_det = tiled(detector, tif, TILE, 0.25)
    png_det = found["tile400_overlap0.25"]
    frame = gpd.read_file(out / "mosaic.gpkg")
    transform = (PIXEL, 0.0, ORIGIN[0], 0.0, -PIXEL, ORIGIN[1])
    polygon_error = 0.0
    for row in frame.itertuples():
        corners = [pixel_to_map(transform, x, y) for x, y in ((row.px_xmin, row.px_ymax), (row.px_xmax, row.px_ymin))]
        expected = (corners[0][0], corners[0][1], corners[1][0], corners[1][1])
        polygon_error = max(polygon_error, max(abs(a - b) for a, b in zip(row.geometry.bounds, expected)))
    lonlat = gpd.read_file(out / "mosaic.geojson")
    reprojected = frame.to_crs(4326)
    lonlat_error = max((abs(np.asarray(a.exterior.coords) - np.asarray(b.exterior.coords)).max()
                        for a, b in zip(lonlat.geometry, reprojected.geometry)), default=0.0)
    same = len(geo_det["boxes"]) == len(png_det["boxes"])
    result["geotiff"] = {
        "crs": f"EPSG:{EPSG}", "pixel_m": PIXEL, "boxes": len(geo_det["boxes"]), "same_count_as_png": same,
        "max_abs_pixel_box_diff_vs_png": float(np.abs(geo_det["boxes"] - png_det["boxes"]).max()) if same else None,
        "gpkg_epsg": frame.crs.to_epsg(), "gpkg_features": len(frame),
        "max_polygon_vs_affine_m": polygon_error, "geojson_vs_gpkg_max_deg": float(lonlat_error),
    }
    if args.picture:
        (work / "picture").mkdir(parents=True, exist_ok=True)
        predict_rasters(detector, [tif], work / "picture", 0.3, TILE, 0.25)  # the CLI's default --score
        picture = Image.open(work / "picture" / "mosaic_pred.png")
        picture.thumbnail((800, 800))
        Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
        picture.save(args.picture, optimize=True)

    if args.large:
        big = work / "large.tif"
        large_raster(np.asarray(Image.open(png).convert("RGB")), big, args.large)
        child = subprocess.run([sys.executable, "-c", LARGE_SCRIPT, args.run, str(big), str(work / "large_out")],
                               capture_output=True, text=True, check=True)
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        mpx = args.large * args.large / 1e6
        windows = [tiles[k % len(tiles)]["file"] for k in range(24)]
        detector.predict(windows[:4])  # warm-up
        start = time.perf_counter()
        detector.predict(windows)
        per_window = len(windows) * TILE * TILE / 1e6 / (time.perf_counter() - start)
        result["large"] = {"size": f"{args.large} x {args.large} x 3 (uint8 GeoTIFF, deflate)", "threads": 2,
                           "tile": TILE, "overlap": 0.25, **measured, "Mpx_per_s": mpx / measured["seconds"],
                           "per_window_predict_Mpx_per_s": per_window}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
