"""The remote-sensing user's journey (issue #27): a GeoTIFF and a GeoPackage of crowns drawn in another CRS ->
``harnet data tiles`` -> ``harnet train`` -> ``harnet predict --tile`` -> a GeoPackage.

On the deepforest wheel's sample scenes (``harnet data trees`` writes them as UTM GeoTIFFs + one GeoPackage in
``OUT/trees/sources``), the crowns reprojected to lon/lat (EPSG:4326), as a layer drawn in QGIS over a web map
would be:

* **the YELL crop alone**, ``data tiles`` with the default spatial split (blocks of tiles) and ``--overlap
  0.25``: every crown lying wholly inside a written tile appears in that tile's annotations at its pixel place
  (IoU >= 0.95, against the crown's box in the GeoTIFF's pixels), and no val tile shares a pixel with a train
  tile;
* **all scenes**, ``data tiles --split rasters``: against ``harnet data trees`` (the same scenes, its crowns
  in the rasters' own CRS), the same tiles and boxes up to the reprojection's rounding;
* with ``--train``: ``harnet train --config trees_cpu`` on the all-scenes tiles (val AP against the trees
  route's, whose tiles these are), then ``harnet predict RUN yell.tif --tile 400`` writing the GeoPackage.

    python benchmarks/gis_journey.py --wheel deepforest-2.1.0-py3-none-any.whl --work /tmp/journey \\
        --out docs/results/gis_journey.json [--train]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

YELL = "2019_YELL_2_541000_4977000_image_crop"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 4) x (m, 4) XYXY -> (n, m) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def crowns_in_pixels(layer: Path, raster: Path) -> np.ndarray:
    """The crowns of ``layer`` (in the raster's CRS) as XYXY boxes in the raster's pixels: the reference."""
    import geopandas
    import rasterio

    frame = geopandas.read_file(layer)
    with rasterio.open(raster) as ds:
        frame = frame.to_crs(ds.crs)
        inverse = ~ds.transform
        bounds = frame.geometry.bounds.to_numpy()
    x0, y1 = inverse * (bounds[:, 0], bounds[:, 1])
    x1, y0 = inverse * (bounds[:, 2], bounds[:, 3])
    return np.stack([x0, y0, x1, y1], axis=1)


def tiles_of(root: Path) -> dict[str, dict[str, object]]:
    """file stem -> {split, window, boxes (XYXY in the tile)} of a COCO dataset written by data tiles/trees."""
    out: dict[str, dict[str, object]] = {}
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        boxes: dict[int, list[list[float]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes.setdefault(ann["image_id"], []).append([x, y, x + w, y + h])
        for image in data["images"]:
            out[Path(image["file_name"]).stem] = {"split": split, "window": image.get("window"),
                                                  "raster": image.get("raster"),
                                                  "boxes": np.array(boxes.get(image["id"], []), dtype=np.float64)}
    return out


def yell_check(tiles: dict[str, dict[str, object]], reference: np.ndarray) -> dict[str, object]:
    """Every reference crown wholly inside a written tile: found in that tile at IoU >= 0.95?"""
    worst, inside, found = 1.0, 0, 0
    for tile in tiles.values():
        x, y, w, h = tile["window"]  # type: ignore[misc]
        whole = ((reference[:, 0] >= x) & (reference[:, 1] >= y) & (reference[:, 2] <= x + w)
                 & (reference[:, 3] <= y + h))
        crowns = reference[whole] - np.array([x, y, x, y])
        boxes = tile["boxes"]
        inside += len(crowns)
        if len(crowns) == 0:
            continue
        best = box_iou(crowns, boxes).max(axis=1) if len(boxes) else np.zeros(len(crowns))  # type: ignore[arg-type]
        found += int((best >= 0.95).sum())
        worst = min(worst, float(best.min()))
    val = [t["window"] for t in tiles.values() if t["split"] == "val"]
    train = [t["window"] for t in tiles.values() if t["split"] == "train"]
    shared = sum(1 for a in val for b in train if a[0] < b[0] + b[2] and b[0] < a[0] + a[2]  # type: ignore[index]
                 and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])  # type: ignore[index]
    return {"crowns_wholly_inside_a_tile": inside, "found_iou_0.95": found, "worst_iou": worst,
            "val_train_pairs_sharing_a_pixel": shared, "tiles_train": len(train), "tiles_val": len(val)}


def same_as_trees(journey: dict[str, dict[str, object]], trees: dict[str, dict[str, object]]) -> dict[str, object]:
    """The journey's tiles against the trees route's: same names, splits, box counts; largest box difference."""
    worst, boxes = 0.0, 0
    same_split = all(journey[k]["split"] == trees[k]["split"] for k in trees if k in journey)
    for name, tile in trees.items():
        other = journey.get(name)
        if other is None or len(other["boxes"]) != len(tile["boxes"]):  # type: ignore[arg-type]
            return {"same_tiles": False, "missing_or_different": name}
        a = np.array(sorted(map(tuple, tile["boxes"])))  # type: ignore[call-overload]
        b = np.array(sorted(map(tuple, other["boxes"])))  # type: ignore[call-overload]
        if len(a):
            worst = max(worst, float(np.abs(a - b).max()))
        boxes += len(a)
    return {"same_tiles": set(journey) == set(trees), "same_splits": same_split, "boxes": boxes,
            "max_box_difference_px": worst}


def harnet(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "harnet", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", required=True)
    parser.add_argument("--work", default="/tmp/journey")
    parser.add_argument("--out", default="docs/results/gis_journey.json")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import geopandas

    from harnet.data.tiles import TileOptions, make_tiles
    from harnet.data.trees import convert_trees

    work = Path(args.work)
    result: dict[str, object] = {"command": " ".join(["benchmarks/gis_journey.py", *sys.argv[1:]])}
    convert_trees(work / "trees", wheel=args.wheel)
    sources = work / "trees" / "sources"
    layer = work / "crowns_4326.gpkg"
    geopandas.read_file(sources / "crowns.gpkg").to_crs(4326).to_file(layer, engine="pyogrio")
    yell = sources / f"{YELL}.tif"

    summary = make_tiles([yell], layer, work / "yell", TileOptions(overlap=0.25, label_field="class"))
    print("\n".join(summary.lines()))
    result["yell"] = {**yell_check(tiles_of(work / "yell"), crowns_in_pixels(layer, yell)),
                      "summary": summary.lines()}
    print(result["yell"])

    rasters = sorted(sources.glob("*.tif"))
    summary = make_tiles(rasters, layer, work / "all", TileOptions(label_field="class", split="rasters"))
    print("\n".join(summary.lines()))
    result["all_scenes"] = {**same_as_trees(tiles_of(work / "all"), tiles_of(work / "trees")),
                            "summary": summary.lines()}
    print(result["all_scenes"])

    if args.train:
        data = work / "all"
        run = work / "run"
        tic = time.perf_counter()
        if not (run / "last.pt").is_file():  # a finished run is reused
            harnet("train", "--config", "trees_cpu", "--set", f"output_dir={run}", "--set",
                   f"train.threads={args.threads}", "--set", f"data.train_images={data / 'train'}", "--set",
                   f"data.train_annotations={data / 'annotations' / 'instances_train.json'}",
                   "--set", f"data.val_images={data / 'val'}", "--set",
                   f"data.val_annotations={data / 'annotations' / 'instances_val.json'}")
        evals = sorted(run.glob("eval_step*.json"), key=lambda p: int(p.stem.removeprefix("eval_step")))
        result["train"] = {"minutes": (time.perf_counter() - tic) / 60,
                           "ap_by_step": {p.stem: json.loads(p.read_text())["stats"]["AP"] for p in evals}}
        harnet("predict", str(run), str(yell), "--tile", "400", "--out", str(work / "predict"))
        maps = geopandas.read_file(work / "predict" / f"{YELL}.gpkg")
        result["predict"] = {"gpkg_features": len(maps), "crs": str(maps.crs)}
        print(result["train"], result["predict"])
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
