"""Raster reading: windows, bands, 8-bit parity with load_image, the 16-bit stretch, bad files and windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harnet.data.image_io import BadImageError, load_image
from harnet.deploy.raster import Overview, PilRaster, Window, open_raster, parse_bands, percentile_stretch
from harnet.deploy.tiling import window_grid


def test_png_windows_match_load_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    raster = open_raster(path)
    assert isinstance(raster, PilRaster) and raster.crs is None
    whole = load_image(path)
    np.testing.assert_array_equal(raster.read(Window(10, 5, 30, 20)), whole[:, 5:25, 10:40].numpy())


def test_parse_bands() -> None:
    assert parse_bands("1,2,3") == (1, 2, 3) and parse_bands("4") == (4,) and parse_bands(None) is None
    with pytest.raises(ValueError, match="one band"):
        parse_bands("1,2")


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
