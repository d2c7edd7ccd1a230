"""Raster reading: windows, bands, 8-bit parity with load_image, the 16-bit stretch, bad files and windows; an N-band
model's bands in its units, nodata, rasters that do not fit it; the overview picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harnet.config.model import InputConfig, TransformConfig
from harnet.data.image_io import BadImageError, load_image
from harnet.deploy.raster import (
    Overview,
    PilRaster,
    Window,
    display_image,
    open_raster,
    parse_bands,
    percentile_stretch,
)
from harnet.deploy.tiling import window_grid
from tests_support import write_geotiff


def test_png_windows_match_load_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    raster = open_raster(path)
    assert isinstance(raster, PilRaster) and raster.crs is None
    whole = load_image(path)
    np.testing.assert_array_equal(raster.read(Window(10, 5, 30, 20)), whole[:, 5:25, 10:40].numpy())


def test_parse_bands() -> None:
    """Any number of bands parses (an N-band model reads N); an RGB model refuses two when the raster is opened."""
    assert parse_bands("1,2,3") == (1, 2, 3) and parse_bands("4") == (4,) and parse_bands(None) is None
    assert parse_bands("4,3,2,1") == (4, 3, 2, 1)
    with pytest.raises(ValueError, match="numbered from 1"):
        parse_bands("0,1")
    with pytest.raises(ValueError, match="band numbers"):
        parse_bands("1,x")


def test_an_rgb_model_shows_one_band_or_three(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    with pytest.raises(BadImageError, match="a.png: bands 1,2: an RGB model shows one band .as grey. or three"):
        open_raster(path, bands=(1, 2))


def test_percentile_stretch_ignores_invalid_pixels() -> None:
    sample = np.arange(100, dtype=np.float64).reshape(1, 10, 10)
    valid = np.ones_like(sample, dtype=bool)
    valid[0, 0, :5] = False
    lo, hi = percentile_stretch(sample, valid)
    assert lo[0] == pytest.approx(np.percentile(np.arange(5, 100), 2))
    assert hi[0] == pytest.approx(np.percentile(np.arange(5, 100), 98))


def _geotiff(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633") -> Path:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=from_origin(500000.0, 4000000.0, 0.1, 0.1), tiled=True,
                       blockxsize=16, blockysize=16) as ds:
        ds.write(data)
    return path


def test_16bit_four_band_geotiff_stretched_and_band_choice(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 5000, (4, 32, 48), dtype=np.uint16)
    path = _geotiff(tmp_path / "ms.tif", data)
    raster = open_raster(path)
    assert raster.crs is not None and raster.transform is not None
    window = raster.read(Window(8, 4, 16, 16))
    assert window.shape == (3, 16, 16) and window.dtype == np.float32
    assert float(window.min()) >= 0 and float(window.max()) <= 1 and float(window.std()) > 0.1
    nir = open_raster(path, bands=(4,)).read(Window(0, 0, 48, 32))
    np.testing.assert_array_equal(nir[0], nir[1])
    with pytest.raises(BadImageError, match="band 5 asked for, the raster has 4"):
        open_raster(path, bands=(5, 2, 1))


def test_8bit_geotiff_matches_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    raster = open_raster(_geotiff(tmp_path / "rgb.tif", data))
    png = tmp_path / "rgb.png"
    Image.fromarray(data.transpose(1, 2, 0)).save(png)
    np.testing.assert_array_equal(raster.read(Window(0, 0, 32, 32)), load_image(png).numpy())


def test_unreadable_window_names_file_and_window(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    path = _geotiff(tmp_path / "broken.tif", data)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # the later blocks are gone
    raster = open_raster(path)
    with pytest.raises(BadImageError, match=r"broken\.tif: window x=48 y=48 16x16 unreadable"):
        raster.read(Window(48, 48, 16, 16))


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        open_raster(tmp_path / "nope.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        open_raster(tmp_path / "empty.tif")


@pytest.mark.parametrize("strip_rows", [7, 512])
def test_decimated_reads_equal_gdal_nearest_in_any_strips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          strip_rows: int) -> None:
    """The stretch sample is read in full-resolution strips and decimated in numpy (GDAL's own decimated read
    decodes blocks again per output row), and the overview picture is assembled from a tiled prediction's
    windows (overlapping, the last ones shifted back): both the same pixels as GDAL's nearest out_shape read."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.enums import Resampling

    import harnet.deploy.raster as raster_module

    monkeypatch.setattr(raster_module, "DECIMATE_STRIP_ROWS", strip_rows)
    data = np.random.default_rng(3).integers(0, 256, (3, 50, 70), dtype=np.uint8)
    path = _geotiff(tmp_path / "big.tif", data)
    raster = open_raster(path)
    with rasterio.open(path) as ds:
        expected = ds.read([1, 2, 3], out_shape=(3, 14, 20), resampling=Resampling.nearest)
    np.testing.assert_array_equal(raster._decimated((14, 20)), expected)  # type: ignore[attr-defined]
    overview = Overview(raster.width, raster.height, 20)
    for window in window_grid(raster.width, raster.height, 16, 0.25, minimum=8).windows():
        overview.add(window, raster.read(window))
    assert overview.image.shape == (3, 14, 20)
    np.testing.assert_array_equal(overview.image, expected)


# --- N-band models: their bands, their units, nodata -------------------------------------------------------

FOUR = InputConfig(4, None, "uint16")


def test_an_n_band_model_reads_its_bands_in_its_units_with_nodata_as_nan(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(1, 60000, (4, 32, 48), dtype=np.uint16)
    data[:, :, :8] = 0
    path = _geotiff_nodata(tmp_path / "ms.tif", data, 0)
    window = open_raster(path, model=FOUR).read(Window(0, 0, 48, 32))
    assert window is not None and window.shape == (4, 32, 48)
    assert np.isnan(window[:, :, :8]).all()
    np.testing.assert_array_equal(window[:, :, 8:], data[:, :, 8:].astype(np.float32))
    chosen = open_raster(path, model=InputConfig(3, (4, 3, 2), "uint16")).read(Window(8, 0, 16, 16))
    np.testing.assert_array_equal(chosen, data[[3, 2, 1], :16, 8:24])
    other = open_raster(path, bands=(1, 1, 2, 2), model=FOUR).read(Window(8, 0, 16, 16))
    np.testing.assert_array_equal(other, data[[0, 0, 1, 1], :16, 8:24])
    assert open_raster(path, model=FOUR).read(Window(0, 0, 8, 8)) is None  # all nodata: not predicted


@pytest.mark.parametrize(("count", "dtype", "bands", "message"), [
    (1, np.uint16, None, r"one.tif: 1 band, the model reads 4 bands \(every band of its training images\); choose 4 "
                         "with --bands"),
    (5, np.uint16, None, "five.tif: 5 bands, the model reads 4 bands"),
    (4, np.uint16, (1, 2, 3, 6), r"four.tif: band 6 asked for, the raster has 4 bands \(the model reads 4 bands of "
                                 r"uint16\)"),
    (4, np.uint16, (1, 2), "four.tif: bands 1,2 chosen, the model reads 4 bands"),
    (4, np.uint8, None, "eight.tif: uint8 bands, the model was trained on uint16 ones"),
    (4, np.float32, None, "float.tif: float32 bands, the model was trained on uint16 ones"),
])
def test_rasters_that_do_not_fit_the_model_are_one_line_errors(tmp_path: Path, count: int, dtype: type,
                                                                bands: tuple[int, ...] | None, message: str) -> None:
    name = {1: "one", 5: "five"}.get(count) or {np.uint8: "eight", np.float32: "float"}.get(dtype, "four")
    path = _geotiff(tmp_path / f"{name}.tif", np.ones((count, 16, 16), dtype=dtype))
    with pytest.raises(BadImageError, match=message) as error:
        open_raster(path, bands=bands, model=FOUR)
    assert "\n" not in str(error.value)


def test_an_image_pil_reads_fits_only_an_eight_bit_model(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    rgb = np.random.default_rng(5).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(png)
    with pytest.raises(BadImageError, match="a.png: an 8-bit image read by PIL, the model reads 4 bands of uint16"):
        open_raster(png, model=FOUR)
    bgr = open_raster(png, model=InputConfig(3, (3, 2, 1), "uint8")).read(Window(0, 0, 16, 16))
    np.testing.assert_array_equal(bgr, load_image(png).numpy()[[2, 1, 0]])


def test_an_rgb_model_gets_nodata_as_nan_in_the_stretch_too(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(1000, 5000, (3, 16, 16), dtype=np.uint16)
    data[:, :4] = 0
    window = open_raster(_geotiff_nodata(tmp_path / "rgb16.tif", data, 0)).read(Window(0, 0, 16, 16))
    assert window is not None and np.isnan(window[:, :4]).all()
    assert float(np.nanmin(window)) >= 0 and float(np.nanmax(window)) <= 1


def test_display_draws_raw_bands_around_their_training_mean() -> None:
    transform = TransformConfig(image_mean=(100.0, 200.0, 300.0, 400.0), image_std=(10.0, 10.0, 10.0, 10.0))
    image = np.array([100.0, 220.0, 250.0, 0.0], dtype=np.float32)[:, None, None] * np.ones((4, 2, 2), np.float32)
    image[:, 0, 0] = np.nan
    shown = display_image(image, FOUR, transform)
    assert shown.shape == (3, 2, 2) and shown.dtype == np.float32
    np.testing.assert_allclose(shown[:, 1, 1], [0.5, 1.0, 0.0])  # mean -> 0.5; +-2 std -> 1 and 0 (clipped)
    assert (shown[:, 0, 0] == 0).all()  # nodata black
    grey = display_image(np.full((1, 2, 2), 0.25, np.float32), InputConfig(1, None, "uint8"))
    assert (grey == 0.25).all() and grey.shape == (3, 2, 2)
    rgb = np.random.default_rng(7).random((3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(display_image(rgb), rgb)


def test_the_overview_draws_the_windows_through_the_display() -> None:
    overview = Overview(8, 8, 8, display=lambda part: display_image(part, FOUR, TransformConfig(
        image_mean=(10.0,) * 4, image_std=(1.0,) * 4)))
    overview.add(Window(0, 0, 4, 8), np.full((4, 8, 4), 10.0, np.float32))
    assert overview.image.dtype == np.uint8 and (overview.image[:, :, :4] == 128).all()
    assert (overview.image[:, :, 4:] == 0).all()  # never read: black


def _geotiff_nodata(path: Path, data: np.ndarray, nodata: float) -> Path:
    return write_geotiff(path, data, nodata=nodata, tiled=True, blockxsize=16, blockysize=16)


def test_raw_overview_keeps_the_samples_for_a_caller_that_stretches_them() -> None:
    """``harnet data tiles`` stretches 16-bit samples itself: a raw overview must not clip them to [0, 1]."""
    overview = Overview(4, 4, 2, bands=1, raw=True)
    overview.add(Window(0, 0, 4, 4), np.full((1, 4, 4), 1234.0, dtype=np.float32))
    assert overview.image.dtype == np.float32 and (overview.image == 1234.0).all()
