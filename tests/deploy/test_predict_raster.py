"""``harnet predict --tile``: GeoTIFF in, pixel JSON + GeoPackage + GeoJSON out; plain images; bad inputs; memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harnet.tools.cli import main
from tests_support import TINY, random_checkpoint, write_geotiff


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("predict_raster") / "model.pt", list(TINY))


def _write_geotiff(path: Path, data: np.ndarray) -> Path:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs="EPSG:32633", transform=from_origin(500000.0, 4000000.0, 0.1, 0.1)) as ds:
        ds.write(data)
    return path


def test_geotiff_gets_pixel_boxes_and_map_outputs(model_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("geopandas")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 96, 160), dtype=np.uint8)
    tif = _write_geotiff(tmp_path / "ortho.tif", rgb)
    png = tmp_path / "ortho_plain.png"
    Image.fromarray(rgb.transpose(1, 2, 0)).save(png)
    out = tmp_path / "out"
    args = ["predict", str(model_path), str(tif), str(png), "--tile", "64", "--overlap", "0.25", "--score", "0.0",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} >= {"detections.json", "ortho.gpkg", "ortho.geojson", "ortho_pred.png",
                                                "ortho_plain_pred.png"}
    assert not (out / "ortho_plain.gpkg").exists()  # no CRS: pixel outputs only
    detections = json.loads((out / "detections.json").read_text())
    tif_boxes = sorted(tuple(d["bbox"]) for d in detections if d["file_name"] == str(tif))
    png_boxes = sorted(tuple(d["bbox"]) for d in detections if d["file_name"] == str(png))
    assert tif_boxes and tif_boxes == png_boxes  # the same pixels give the same boxes

    import geopandas as gpd

    frame = gpd.read_file(out / "ortho.gpkg")
    assert frame.crs.to_epsg() == 32633 and len(frame) == len(tif_boxes)


def test_no_crs_note_and_bad_arguments(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(png)
    assert main(["predict", str(model_path), str(png), "--tile", "64", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    assert "plain.png: no CRS; pixel outputs only" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(png), "--tile", "8", "--out", str(tmp_path / "o")]) == 2
    assert "--tile 8: smaller than the model's minimum window" in capsys.readouterr().err
    assert main(["predict", str(model_path), str(png), "--bands", "1,2,3", "--out", str(tmp_path / "o")]) == 2


def test_large_image_without_tile_gets_a_hint(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(png)  # the tiny model tests at 64 px
    assert main(["predict", str(model_path), str(png), "--out", str(tmp_path / "o")]) == 0
    assert "--tile SIZE" in capsys.readouterr().err


MEMORY_SCRIPT = """
import resource, sys, numpy as np, rasterio, torch
from rasterio.transform import from_origin
from harnet.engine.predictor import Detector
torch.set_num_threads(1)
path, model = sys.argv[1], sys.argv[2]
size = 8200  # above the 8192 x 8192 limit of whole images
with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(0, 0, 1, 1), tiled=True, compress="deflate") as ds:
    pass  # never written: GDAL reads the missing blocks as zeros
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
det = Detector.from_checkpoint(model, device="cpu")
out = det.predict_tiled(path, tile=1024, overlap=0.0)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, len(out["boxes"]))
"""


@pytest.mark.slow
def test_raster_above_the_old_limit_in_bounded_memory(model_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "huge.tif"), str(model_path)],
                            capture_output=True, text=True, timeout=300, check=True)
    growth_mb = float(result.stdout.split()[0])
    # One float RGB copy of the whole raster would be 807 MB; a batch of four 1024 px windows is 50 MB.
    assert growth_mb < 400, result.stdout


LOCAL_CS = 'LOCAL_CS["site grid",UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'


def test_hostile_rasters_each_end_in_one_line_or_correct_output(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An engineering (LOCAL_CS) CRS, a raster georeferenced by GCPs, a truncated GeoTIFF and two rasters of
    one name in two folders, in one call: every raster is predicted, each problem is one line naming its file,
    no map is lost or replaced, and detections.json is written."""
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("geopandas")
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 96, 128), dtype=np.uint8)
    local = _write_geotiff(tmp_path / "local.tif", data)
    with rasterio.open(local, "r+") as ds:
        ds.crs = CRS.from_wkt(LOCAL_CS)
    gcps = tmp_path / "gcps.tif"
    with rasterio.open(gcps, "w", driver="GTiff", width=128, height=96, count=3, dtype="uint8") as ds:
        ds.write(data)
        ds.gcps = ([GroundControlPoint(0, 0, 500000, 4000000), GroundControlPoint(96, 128, 500012, 3999990),
                    GroundControlPoint(0, 128, 500012, 4000000)], CRS.from_epsg(32633))
    broken = _write_geotiff(tmp_path / "broken.tif", rng.integers(0, 256, (3, 256, 256), dtype=np.uint8))
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twins = [_write_geotiff(tmp_path / d / "ortho.tif", data) for d in ("a", "b")]
    out = tmp_path / "out"
    inputs = [local, gcps, broken, *twins]
    assert main(["predict", str(model_path), *map(str, inputs), "--tile", "64", "--score", "0", "--out", str(out),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    files = {p.name for p in out.iterdir()}
    assert {"detections.json", "local.gpkg", "a_ortho.gpkg", "a_ortho.geojson", "b_ortho.gpkg",
            "b_ortho.geojson"} <= files
    assert "local.geojson" not in files and not any(name.startswith(".") for name in files)
    assert f"{local}: no local.geojson: its CRS has no transformation to lon/lat" in err
    assert f"{gcps}: georeferenced by ground control points" in err
    assert f"{broken}:" in err and "windows unreadable, the rest predicted" in err
    predicted = {d["file_name"] for d in json.loads((out / "detections.json").read_text())}
    assert {str(p) for p in twins} <= predicted


def test_overlap_that_would_predict_each_pixel_too_often_is_refused(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((384, 512, 3), dtype=np.uint8)).save(png)
    assert main(["predict", str(model_path), str(png), "--tile", "64", "--overlap", "0.99",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overlap 0.99" in err[0]


def test_long_strip_gets_a_bounded_picture(model_path: Path, tmp_path: Path) -> None:
    png = tmp_path / "strip.png"
    Image.fromarray(np.full((8, 3000, 3), 128, dtype=np.uint8)).save(png)
    out = tmp_path / "o"
    assert main(["predict", str(model_path), str(png), "--tile", "64", "--overlap", "0", "--out", str(out),
                 "--no-progress"]) == 0
    with Image.open(out / "strip_pred.png") as picture:
        assert max(picture.size) <= 4096


def test_nodata_windows_are_not_predicted_and_counted(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rasterio = pytest.importorskip("rasterio")
    data = np.zeros((3, 64, 256), dtype=np.uint8)
    data[:, :, :64] = np.random.default_rng(3).integers(1, 256, (3, 64, 64), dtype=np.uint8)
    tif = _write_geotiff(tmp_path / "border.tif", data)
    with rasterio.open(tif, "r+") as ds:
        ds.nodata = 0
    assert main(["predict", str(model_path), str(tif), "--tile", "64", "--overlap", "0", "--out",
                 str(tmp_path / "o"), "--no-progress"]) == 0
    assert f"{tif}: 4 windows (3 all nodata, not predicted)" in capsys.readouterr().err


def test_unwritable_output_folder_fails_before_predicting(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((50, 70, 3), dtype=np.uint8)).save(png)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["predict", str(model_path), str(png), "--out", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{blocker / 'out'}: output folder is not writable" in err[0]


FOUR_BANDS = [*TINY, "model.input={channels: 4, dtype: uint16}",
              "model.transform.image_mean=[2500.0, 2400.0, 2700.0, 2600.0]",
              "model.transform.image_std=[750.0, 720.0, 760.0, 730.0]"]


@pytest.fixture(scope="module")
def four_band_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("four_bands") / "model.pt", FOUR_BANDS)


def test_a_four_band_geotiff_gives_the_same_detections_from_the_checkpoint_and_its_onnx_export(
    four_band_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The torch-free runtime reads the model's bands in its units from the export's metadata, with no flag:
    the same windows (nodata border skipped), the same detections as the checkpoint's to float rounding."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    data = np.random.default_rng(0).integers(1000, 5000, (4, 96, 160), dtype=np.uint16)
    data[:, :, :70] = 0
    tif = write_geotiff(tmp_path / "ms.tif", data, nodata=0)
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(four_band_model), "--out", str(onnx)]) == 0
    # int8 calibration reads its images as the model reads them (4 bands of uint16, nodata as the band mean).
    assert main(["export", str(four_band_model), "--int8", "--calib", str(tif), "--out", str(tmp_path / "q.onnx")]) == 0
    runs = {}
    for name, model in (("torch", four_band_model), ("onnx", onnx)):
        out = tmp_path / name
        assert main(["predict", str(model), str(tif), "--tile", "64", "--overlap", "0", "--score", "0.05",
                     "--out", str(out), "--no-progress"]) == 0
        assert f"{tif}: 6 windows (2 all nodata, not predicted)" in capsys.readouterr().err
        runs[name] = sorted(json.loads((out / "detections.json").read_text()), key=lambda d: -d["score"])
        with Image.open(out / "ms_pred.png") as picture:
            assert picture.mode == "RGB"
    torch_run, onnx_run = runs["torch"], runs["onnx"]
    assert torch_run and len(torch_run) == len(onnx_run)
    # The same network to float rounding: scores to 1e-4, boxes to 1e-3 px (tests/tools/test_export.py's bounds).
    np.testing.assert_allclose([d["score"] for d in onnx_run], [d["score"] for d in torch_run], atol=1e-4, rtol=0)
    np.testing.assert_allclose([d["bbox"] for d in onnx_run], [d["bbox"] for d in torch_run], atol=1e-3, rtol=0)
    assert all(d["bbox"][0] >= 64 - 1e-3 for d in torch_run), "nothing in the nodata windows"


@pytest.mark.parametrize(("count", "dtype", "bands", "message"), [
    (1, np.uint16, [], "one.tif: 1 band, the model reads 4 bands"),
    (5, np.uint16, [], "five.tif: 5 bands, the model reads 4 bands (every band of its training images); choose 4 "
                       "with --bands"),
    (5, np.uint16, ["--bands", "2,3,4,6"], "five.tif: band 6 asked for, the raster has 5 bands"),
    (4, np.uint8, [], "eight.tif: uint8 bands, the model was trained on uint16 ones"),
])
def test_rasters_that_do_not_fit_a_four_band_model_are_skipped_in_one_line(
    four_band_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], count: int, dtype: type,
    bands: list[str], message: str,
) -> None:
    name = {1: "one", 5: "five"}.get(count, "eight")
    tif = write_geotiff(tmp_path / f"{name}.tif", np.ones((count, 64, 64), dtype=dtype))
    assert main(["predict", str(four_band_model), str(tif), "--tile", "64", *bands, "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 1
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and message in skipped[0]
