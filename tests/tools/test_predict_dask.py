"""``harnet predict --dask local:2`` equals one process: the same detections.json (hence the same AP), pictures
and maps, on a folder of images and on a GeoTIFF predicted window by window (the tiling merge included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.tools.cli import main
from tests_support import TINY, random_checkpoint

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("dask") / "model.pt", list(TINY))


def _predict(model: Path, out: Path, *args: str) -> int:
    return main(["predict", str(model), *args, "--out", str(out), "--score", "0.05", "--threads", "1",
                 "--no-progress"])


def _ap(detections_file: Path, annotations: Path) -> float:
    """COCO AP of a detections.json against a COCO annotation file (images matched by file name)."""
    from pycocotools.coco import COCO

    from harnet.engine.evaluation import evaluate_coco

    gt = COCO(str(annotations))
    ids = {Path(image["file_name"]).name: image["id"] for image in gt.dataset["images"]}
    results = [{"image_id": ids[Path(d["file_name"]).name], "category_id": d["category_id"], "bbox": d["bbox"],
                "score": d["score"]} for d in json.loads(detections_file.read_text())]
    categories = sorted(gt.getCatIds())
    names = [gt.cats[c]["name"] for c in categories]
    return evaluate_coco(gt, results, names, categories).stats["AP"]


@pytest.mark.slow
def test_images_on_two_workers_equal_one_process(model_path: Path, shapes_root: Path, tmp_path: Path) -> None:
    images = shapes_root / "val"
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(model_path, one, str(images)) == 0
    assert _predict(model_path, two, str(images), "--dask", "local:2") == 0
    assert (two / "detections.json").read_bytes() == (one / "detections.json").read_bytes()
    annotations = shapes_root / "annotations" / "instances_val.json"
    assert abs(_ap(two / "detections.json", annotations) - _ap(one / "detections.json", annotations)) <= 1e-6
    pictures = sorted(p.name for p in one.glob("*_pred.png"))
    assert pictures and pictures == sorted(p.name for p in two.glob("*_pred.png"))
    assert all((one / name).read_bytes() == (two / name).read_bytes() for name in pictures)


@pytest.mark.slow
def test_geotiff_windows_on_two_workers_equal_one_process(model_path: Path, tmp_path: Path) -> None:
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("geopandas")
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(0, 256, (3, 200, 260), dtype=np.uint8)
    data[:, :70, :70] = 0  # an all-nodata corner: windows not predicted, on either side
    tif = tmp_path / "ortho.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=260, height=200, count=3, dtype="uint8", nodata=0,
                       crs="EPSG:32633", transform=from_origin(500000.0, 4000000.0, 0.1, 0.1)) as ds:
        ds.write(data)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _predict(model_path, one, str(tif), "--tile", "64") == 0
    assert _predict(model_path, two, str(tif), "--tile", "64", "--dask", "local:2") == 0
    detections = json.loads((one / "detections.json").read_text())
    assert len(detections) > 10
    for name in ("detections.json", "ortho_pred.png", "ortho.geojson"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    # AP against boxes standing in for ground truth (the confident ones): equal detections, equal AP.
    gt = {"images": [{"id": 1, "file_name": "ortho.tif", "width": 260, "height": 200}],
          "categories": [{"id": c, "name": str(c)} for c in sorted({d["category_id"] for d in detections})],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": d["category_id"], "bbox": d["bbox"],
                           "area": d["bbox"][2] * d["bbox"][3], "iscrowd": 0}
                          for k, d in enumerate(d for d in detections if d["score"] >= 0.5)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ap_one, ap_two = (_ap(out / "detections.json", tmp_path / "gt.json") for out in (one, two))
    assert ap_one > 0 and abs(ap_two - ap_one) <= 1e-6


def test_dask_option_errors(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harnet.tools.predict_dask import parse_dask, worker_threads

    assert parse_dask("local:3") == (3, None) and parse_dask("tcp://head:8786") == (None, "tcp://head:8786")
    assert worker_threads("local:2", 5) == 5 and worker_threads("tcp://head:8786", None) is None
    assert worker_threads("local:1", None) >= 1  # type: ignore[operator]
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    assert _predict(model_path, tmp_path / "o", str(image), "--dask", "local:0") == 2
    assert "--dask local:0: at least one worker" in capsys.readouterr().err
    assert _predict(model_path, tmp_path / "o", str(image), "--dask", "nonsense") == 2
    assert "--dask nonsense: expected local:N" in capsys.readouterr().err
