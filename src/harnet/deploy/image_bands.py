"""Which bands of an image file harnet reads, in which units: the one rule for training data
(:func:`harnet.data.image_io.load_bands`) and for prediction (:func:`read_for_model`).

Ordinary images are decoded by PIL exactly as before (:mod:`harnet.utils.image_decode`: RGB in [0, 1], grey
repeated, alpha composited on white, palettes, EXIF orientation, 16-bit greyscale PNGs rescaled): 3 bands of
``uint8``. A file GDAL reads (:data:`~harnet.deploy.raster.GDAL_SUFFIXES`, a GeoTIFF) goes through rasterio, when
it is installed, unless it is such an image, 8-bit grey or RGB without nodata (or with alpha, a palette, CMYK):
any other data type, 2 or more than 3 bands, or a nodata value or mask. Its bands are then what the model sees,
in their own units (8-bit ones divided by 255 as PIL's are, the others raw: normalised later by per-band
statistics of the training data), with NaN where a pixel is nodata (8-bit grey with nodata is repeated into 3
bands, as PIL shows it). Without rasterio every file goes through PIL, whose refusal of a multi-band TIFF
names the extra to install.

Why not rasterio for every GeoTIFF: the same pixels either way for plain 8-bit RGB, but PIL's handling of
alpha, palettes and EXIF orientation is what every such dataset was trained with until now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from harnet.config.model import InputConfig
from harnet.deploy.raster import (
    GDAL_SUFFIXES,
    GEO_EXTRA,
    GdalRaster,
    Raster,
    Window,
    band_dtype,
    check_dtype,
    model_bands,
    open_raster,
    rasterio_available,
)
from harnet.utils.errors import first_line
from harnet.utils.image_decode import BadImageError, _decode, check_size, open_image

# Colour interpretations whose 8-bit files PIL converts to RGB (alpha composited, palette looked up, CMYK and
# YCbCr converted): those stay PIL's.
_PIL_COLOURS = {"alpha", "palette", "cyan", "magenta", "yellow", "black", "Y", "Cb", "Cr"}
# The data types a band may have (InputConfig.dtype): GDAL's complex types are not images.
_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64")


@dataclass(frozen=True)
class ImageBands:
    """How an image file is read: ``count`` bands of ``dtype`` by ``reader``. PIL's images are 3 bands of uint8 (RGB
    in [0, 1]); a raster's ``file_bands`` are the file's band behind each of them, its ``size`` (width, height)."""

    count: int
    dtype: str
    reader: Literal["pil", "gdal"]
    file_bands: tuple[int, ...] = ()
    size: tuple[int, int] = (0, 0)

    def input(self, bands: Sequence[int] | None = None) -> InputConfig:
        """The model input these bands make (``bands``: the ones chosen, 1-based)."""
        chosen = tuple(bands) if bands else None
        return InputConfig(len(chosen) if chosen else self.count, chosen, self.dtype)  # type: ignore[arg-type]


PIL_IMAGE = ImageBands(3, "uint8", "pil")


def probe_image(path: str | Path) -> ImageBands:
    """How ``path`` is read (see the module docstring), from its header only."""
    p = Path(path)
    if p.suffix.lower() not in GDAL_SUFFIXES or not rasterio_available():
        return PIL_IMAGE
    import rasterio

    if not p.is_file():
        raise FileNotFoundError(f"{p}: image file not found")
    if p.stat().st_size == 0:
        raise BadImageError(f"{p}: empty file (0 bytes)")
    try:
        with rasterio.open(p) as ds:
            count, dtypes, size = int(ds.count), list(ds.dtypes), (int(ds.width), int(ds.height))
            colours = {c.name for c in ds.colorinterp}
            masked = ds.nodata is not None or any(
                "all_valid" not in [f.name for f in flags] for flags in ds.mask_flag_enums)
    except Exception as e:
        raise BadImageError(f"{p}: not a raster GDAL can read ({first_line(e)})") from None
    dtype = band_dtype(str(p), dtypes)
    if dtype not in _DTYPES:
        raise BadImageError(f"{p}: {dtype} bands; harnet reads integer and float bands ({', '.join(_DTYPES)})")
    if dtype == "uint8" and (colours & _PIL_COLOURS or (count in (1, 3) and not masked)):
        return PIL_IMAGE
    if dtype == "uint8" and count in (1, 3):  # 8-bit grey or RGB with nodata: PIL's 3 bands, nodata known
        return ImageBands(3, dtype, "gdal", (1, 1, 1) if count == 1 else (1, 2, 3), size)
    return ImageBands(count, dtype, "gdal", tuple(range(1, count + 1)), size)


def chosen_bands(path: str | Path, info: ImageBands, bands: Sequence[int] | None) -> tuple[int, ...] | None:
    """``bands`` (``data.bands``) checked against the image's: one out of range is a one-line error naming it."""
    if not bands:
        return None
    chosen = tuple(bands)
    if max(chosen) > info.count:
        what = "an 8-bit image read as RGB" if info.reader == "pil" else f"{info.count} band(s) of {info.dtype}"
        raise BadImageError(f"{path}: band {max(chosen)} asked for (data.bands {list(chosen)}), the image has "
                            f"{info.count}: {what}")
    return chosen


def read_image(path: str | Path, bands: Sequence[int] | None = None, info: ImageBands | None = None) -> np.ndarray:
    """The training view of an image file: float32 ``(bands, H, W)`` in the bands' own units, NaN where nodata.

    ``bands`` (1-based) picks bands, default all; ``info`` is :func:`probe_image`'s answer if known. An image PIL
    reads gives exactly the array it always did."""
    info = info or probe_image(path)
    chosen = chosen_bands(path, info, bands)
    if info.reader == "pil":
        with open_image(path) as image:
            array = np.ascontiguousarray(_decode(image, path).transpose(2, 0, 1))
        return array if chosen is None else np.ascontiguousarray(array[[b - 1 for b in chosen]])
    check_size(path, *info.size)
    file_bands = tuple(info.file_bands[b - 1] for b in (chosen or range(1, info.count + 1)))
    return _whole(GdalRaster(path, file_bands, own_units=True))


def _whole(raster: Raster) -> np.ndarray:
    """Every pixel of an open raster (closed after): one window the raster's size, NaN when all nodata."""
    try:
        image = raster.read(Window(0, 0, raster.width, raster.height))
        if image is None:
            bands = len(raster.bands) if isinstance(raster, GdalRaster) else 3
            image = np.full((bands, raster.height, raster.width), np.nan, dtype=np.float32)
        return image
    finally:
        raster.close()


def read_for_model(path: str | Path, model: InputConfig, bands: Sequence[int] | None = None) -> np.ndarray:
    """The whole image ``path`` as a model with input ``model`` reads it: for an N-band model the numbers its
    training images had (``bands`` choose others than its own), for an RGB model what tiled prediction reads
    (:mod:`harnet.deploy.raster`: ordinary images as always, other rasters as RGB). A file that does not fit
    the model (band count, bands out of range, data type) is a one-line error naming it."""
    info = probe_image(path)
    if not model.is_rgb:
        chosen = model_bands(str(path), info.count, model, bands)
        if info.dtype != model.dtype and Path(path).suffix.lower() in GDAL_SUFFIXES and not rasterio_available():
            raise BadImageError(f"{path}: the model reads {model.describe()}, which harnet reads through rasterio: "
                                f"{GEO_EXTRA}")
        check_dtype(str(path), info.dtype, model)
        return read_image(path, chosen, info)
    if info.reader == "pil" and not bands:
        return read_image(path, None, info)
    if info.reader == "gdal":
        check_size(path, *info.size)
    return _whole(open_raster(path, bands, model))
