"""Which bands of an image file harnet reads: PIL keeps ordinary images, rasterio the rest; a model reads a file
as its training images were read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harnet.config.model import InputConfig
from harnet.deploy.image_bands import PIL_IMAGE, ImageBands, probe_image, read_for_model, read_image
from harnet.deploy.predictor import load_image
from harnet.deploy.raster import Window, open_raster
from harnet.utils.image_decode import BadImageError
from tests_support import write_geotiff

pytest.importorskip("rasterio")


@pytest.mark.parametrize(("count", "dtype", "nodata", "expected"), [
    (3, np.uint8, None, PIL_IMAGE),
    (1, np.uint8, None, PIL_IMAGE),
    (3, np.uint8, 0, ImageBands(3, "uint8", "gdal", (1, 2, 3), (8, 6))),
    (1, np.uint8, 0, ImageBands(3, "uint8", "gdal", (1, 1, 1), (8, 6))),
    (2, np.uint8, None, ImageBands(2, "uint8", "gdal", (1, 2), (8, 6))),
    (5, np.uint8, None, ImageBands(5, "uint8", "gdal", (1, 2, 3, 4, 5), (8, 6))),
    (1, np.uint16, None, ImageBands(1, "uint16", "gdal", (1,), (8, 6))),
    (3, np.float32, None, ImageBands(3, "float32", "gdal", (1, 2, 3), (8, 6))),
])
def test_how_a_geotiff_is_read(tmp_path: Path, count: int, dtype: type, nodata: float | None,
                               expected: ImageBands) -> None:
    path = write_geotiff(tmp_path / "a.tif", np.ones((count, 6, 8), dtype=dtype), nodata=nodata)
    assert probe_image(path) == expected


def test_alpha_stays_pils_and_complex_bands_are_refused(tmp_path: Path) -> None:
    rgba = write_geotiff(tmp_path / "rgba.tif", np.full((4, 6, 8), 200, dtype=np.uint8), photometric="RGB",
                         alpha="YES")
    assert probe_image(rgba) == PIL_IMAGE
    assert read_image(rgba).shape == (3, 6, 8)
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(png)
    assert probe_image(png) == PIL_IMAGE
    cplx = write_geotiff(tmp_path / "c.tif", np.ones((1, 4, 4), dtype=np.complex64))
    with pytest.raises(BadImageError, match="c.tif: complex64 bands; harnet reads integer and float bands"):
        probe_image(cplx)


def test_a_model_reads_a_whole_file_as_its_training_images_were_read(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(1, 60000, (4, 20, 24), dtype=np.uint16)
    data[:, 0] = 0
    path = write_geotiff(tmp_path / "ms.tif", data, nodata=0)
    model = InputConfig(3, (4, 3, 2), "uint16")
    whole = read_for_model(path, model)
    np.testing.assert_array_equal(whole, read_image(path, (4, 3, 2)))  # the training view, NaN where nodata
    window = open_raster(path, model=model).read(Window(0, 0, 24, 20))
    np.testing.assert_array_equal(whole, window)  # and tiled prediction's
    with pytest.raises(BadImageError, match="ms.tif: 4 bands, the model reads 3"):
        read_for_model(path, InputConfig(3, None, "uint16"))
    with pytest.raises(BadImageError, match="ms.tif: uint16 bands, the model was trained on uint8 ones"):
        read_for_model(path, InputConfig(4, None, "uint8"))


def test_an_rgb_model_reads_ordinary_images_as_always_and_rasters_as_tiled_prediction(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    png = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(png)
    np.testing.assert_array_equal(read_for_model(png, InputConfig()), load_image(png))
    sixteen = write_geotiff(tmp_path / "rgb16.tif", rng.integers(1000, 5000, (3, 10, 12), dtype=np.uint16))
    stretched = read_for_model(sixteen, InputConfig())
    np.testing.assert_array_equal(stretched, open_raster(sixteen).read(Window(0, 0, 12, 10)))
    assert float(stretched.min()) >= 0 and float(stretched.max()) <= 1
