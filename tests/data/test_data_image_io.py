"""Every PIL mode a dataset may meet decodes to 3-channel float32 in [0, 1], with the right values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harnet.data.image_io import BadImageError, ImageBands, image_size, load_bands, load_image, probe_image
from tests_support import write_geotiff


def _check(path: Path, height: int, width: int) -> torch.Tensor:
    image = load_image(path)
    assert image.shape == (3, height, width) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    return image.as_subclass(torch.Tensor)


def test_grayscale_and_binary(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 128).save(tmp_path / "l.png")
    image = _check(tmp_path / "l.png", 4, 5)
    torch.testing.assert_close(image, torch.full((3, 4, 5), 128 / 255))
    Image.new("1", (5, 4), 1).save(tmp_path / "one.png")
    torch.testing.assert_close(_check(tmp_path / "one.png", 4, 5), torch.ones(3, 4, 5))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 0, 0)  # fully transparent, undefined colour
    Image.fromarray(pixels).save(tmp_path / "rgba.png")
    image = _check(tmp_path / "rgba.png", 2, 2)
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert _check(tmp_path / "p.png", 3, 3)[:, 1, 1].tolist() == [0.0, 1.0, 0.0]
    image.save(tmp_path / "pt.png", transparency=1)
    assert _check(tmp_path / "pt.png", 3, 3)[:, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = _check(tmp_path / "g16.png", 1, 3)
    np.testing.assert_allclose(image[0, 0].numpy(), [0.0, 32768 / 65535, 1.0], atol=1e-6)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = _check(tmp_path / "cmyk.jpg", 8, 8)[:, 4, 4]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (6, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "rot.jpg") == (4, 6)
    _check(tmp_path / "rot.jpg", 6, 4)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")


# --- raster bands (harnet.deploy.image_bands through load_bands) -----------------------------------------


def test_load_bands_of_an_ordinary_image_is_load_image_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path)
    assert torch.equal(load_bands(path), load_image(path))
    assert torch.equal(load_bands(path, (3, 1)), load_image(path)[[2, 0]])
    with pytest.raises(BadImageError, match=r"a.png: band 4 asked for \(data.bands \[4\]\), the image has 3"):
        load_bands(path, (4,))


def test_sixteen_bit_bands_keep_their_units_and_nodata_is_nan(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(1, 60000, (4, 16, 24), dtype=np.uint16)
    data[:, :, :5] = 0
    path = write_geotiff(tmp_path / "ms.tif", data, nodata=0)
    assert probe_image(path) == ImageBands(4, "uint16", "gdal", (1, 2, 3, 4), (24, 16))
    image = load_bands(path).numpy()
    assert image.shape == (4, 16, 24) and image.dtype == np.float32
    assert np.isnan(image[:, :, :5]).all()
    np.testing.assert_array_equal(image[:, :, 5:], data[:, :, 5:].astype(np.float32))
    np.testing.assert_array_equal(load_bands(path, (4, 2)).numpy()[:, :, 5:], data[[3, 1], :, 5:])


def test_eight_bit_rgb_geotiffs_read_as_pil_reads_them(tmp_path: Path) -> None:
    """Without nodata, PIL reads them (as always); with nodata, rasterio gives the same numbers and NaN where
    nodata; 8-bit grey with nodata is repeated into PIL's 3 grey bands."""
    data = np.random.default_rng(2).integers(1, 256, (3, 16, 16), dtype=np.uint8)
    plain = write_geotiff(tmp_path / "plain.tif", data)
    assert probe_image(plain).reader == "pil"
    png = tmp_path / "same.png"
    Image.fromarray(data.transpose(1, 2, 0)).save(png)
    assert torch.equal(load_bands(plain), load_image(png))
    data[:, 0, 0] = 0
    masked = write_geotiff(tmp_path / "nodata.tif", data, nodata=0)
    assert probe_image(masked) == ImageBands(3, "uint8", "gdal", (1, 2, 3), (16, 16))
    image = load_bands(masked).numpy()
    assert np.isnan(image[:, 0, 0]).all()
    np.testing.assert_array_equal(image[:, 1:], load_image(png).numpy()[:, 1:])
    grey = load_bands(write_geotiff(tmp_path / "grey.tif", data[:1], nodata=0)).numpy()
    assert grey.shape == (3, 16, 16) and np.array_equal(grey[0], grey[2], equal_nan=True)


def test_a_multiband_tiff_without_rasterio_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harnet.deploy.image_bands as image_bands

    path = write_geotiff(tmp_path / "ms.tif", np.ones((5, 8, 8), dtype=np.uint16))
    monkeypatch.setattr(image_bands, "rasterio_available", lambda: False)
    with pytest.raises(BadImageError, match=r'ms.tif: not a readable image file .*pip install "harnet\[geo\]"'):
        load_bands(path)
