"""Rasters read window by window: GeoTIFFs (and anything GDAL reads) through rasterio, plain images through PIL.

Tiled prediction (:mod:`harnet.deploy.predict_raster`, any backend) asks a raster for one window at a
time, so an orthomosaic of any size is never decoded whole when GDAL can read it in blocks. rasterio is an
optional extra (``pip install -e ".[geo]"``); without it every file goes through PIL, which decodes the
image once.

A window is float32 ``(bands, h, w)``: the model's input before normalisation. Which bands, in which units,
follows the model's :class:`~harnet.config.model.InputConfig` (``model``):

* an RGB model (the default input, or no model given): ``bands`` (1-based, one or three of them; one band is
  repeated into grey RGB), else bands 1, 2, 3 of a raster with three or more bands and band 1 of a raster with
  fewer; 8-bit bands are divided by 255, exactly as training images are, so a tile cut from the raster gives
  the same pixels as the same tile saved as PNG; 16-bit, other integer and float bands have no common white
  point: each band is stretched linearly from its 2nd to its 98th percentile, computed once from a decimated
  read of the whole raster (at most :data:`STRETCH_OVERVIEW` px on the long side, nodata excluded), and clipped
  to [0, 1]. Every window uses the same stretch, so seams show no brightness steps;
* any other model: the bands it was trained on (``input.bands``, else every band, as many as it has channels;
  ``bands`` chooses others), in its units: 8-bit bands divided by 255, other types raw, the numbers its
  training images had (:mod:`harnet.deploy.image_bands`). A raster with another band count, bands out of
  range or another data type than the model's is a one-line :class:`BadImageError` naming the file.

Pixels flagged nodata (the raster's nodata value, a mask or alpha band, and non-finite float values) are NaN:
normalisation (:func:`harnet.deploy.preprocess.normalize`) maps them to 0, the band's training mean, as
training does. A window entirely nodata reads as None.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from harnet.config.model import InputConfig, TransformConfig
from harnet.deploy.tiling import Window
from harnet.utils.errors import first_line
from harnet.utils.image_decode import BadImageError, pil_to_rgb_array, tiff_hint

# Long side of the decimated read the percentile stretch is computed from: enough pixels for stable
# percentiles, a few MB whatever the raster's size.
STRETCH_OVERVIEW = 1024
STRETCH_PERCENTILES = (2.0, 98.0)
# GDAL's block cache for window reads, in MB. Its default (5 % of the machine's memory) would let the cache,
# not the window batch, set the memory of a tiled prediction.
GDAL_CACHE_MB = 64
# Rows per full-resolution strip of a decimated read (overview picture, stretch sample).
DECIMATE_STRIP_ROWS = 512
# Suffixes read through rasterio when it is installed (GDAL's block-wise formats); other files go through PIL.
GDAL_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img", ".ecw", ".nc", ".hdf", ".sid"}
# The overview picture of bands in raw units spans each band's training mean +- this many standard deviations.
DISPLAY_STDS = 2.0
GEO_EXTRA = 'pip install "harnet[geo]"'

# (a, b, c, d, e, f): map x = a*col + b*row + c, map y = d*col + e*row + f (GDAL's and rasterio's order).
Affine6 = tuple[float, float, float, float, float, float]


class Raster(Protocol):
    """What tiled prediction reads: the size, the georeference (if any) and windows of the model's bands.

    ``georef_note`` says why a raster that looks georeferenced has no usable ``crs``/``transform`` (e.g.
    ground control points), so the user is told what to do rather than "no CRS"."""

    path: str
    width: int
    height: int
    crs: str | None  # WKT, None for a plain image
    transform: Affine6 | None  # pixel -> map coordinates, None without a CRS
    georef_note: str | None

    def read(self, window: Window) -> np.ndarray | None:
        """(bands, height, width) float32 in the model's units, NaN where nodata; None when every pixel of the
        window is nodata (the network is not run on it)."""
        ...

    def close(self) -> None: ...


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` -> (4, 3, 2): 1-based band numbers. How many an input needs depends on the model (one or three
    for an RGB model, its channels for another), checked when a raster is opened."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--bands {text}: expected 1-based band numbers such as 1,2,3") from None
    if min(bands) < 1:
        raise ValueError(f"--bands {text}: bands are numbered from 1")
    return bands


def _rgb_bands(count: int, bands: Sequence[int] | None, path: str) -> tuple[int, int, int]:
    chosen = tuple(bands) if bands else ((1, 2, 3) if count >= 3 else (1,))
    if len(chosen) not in (1, 3):
        raise BadImageError(f"{path}: bands {','.join(map(str, chosen))}: an RGB model shows one band (as grey) or "
                            "three (red, green, blue)")
    if max(chosen) > count:
        raise BadImageError(f"{path}: band {max(chosen)} asked for, the raster has {count} band(s)")
    return (chosen[0],) * 3 if len(chosen) == 1 else (chosen[0], chosen[1], chosen[2])  # type: ignore[misc]


def _plural(n: int, noun: str = "band") -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def model_bands(path: str, count: int, model: InputConfig, bands: Sequence[int] | None) -> tuple[int, ...]:
    """The bands of a ``count``-band raster that a non-RGB ``model`` reads: ``bands`` if given, else the model's
    own (``input.bands``), else every band, which must then be as many as the model's channels. Anything that
    cannot fit is a one-line :class:`BadImageError` naming the file."""
    chosen = tuple(bands) if bands else model.bands
    if chosen is None:
        if count != model.channels:
            raise BadImageError(f"{path}: {_plural(count)}, the model reads {_plural(model.channels)} (every band "
                                f"of its training images); choose {model.channels} with --bands")
        return tuple(range(1, count + 1))
    if len(chosen) != model.channels:
        raise BadImageError(f"{path}: bands {','.join(map(str, chosen))} chosen, the model reads "
                            f"{_plural(model.channels)}")
    if max(chosen) > count:
        raise BadImageError(f"{path}: band {max(chosen)} asked for, the raster has {_plural(count)} (the model "
                            f"reads {model.describe()})")
    return chosen


def check_dtype(path: str, dtype: str, model: InputConfig) -> None:
    """A raster's data type against the model's: other units would be normalised as if they were the training's."""
    if dtype != model.dtype:
        raise BadImageError(f"{path}: {dtype} bands, the model was trained on {model.dtype} ones (other units); "
                            f"convert the raster first, e.g. gdal_translate -ot {model.dtype.capitalize()}")


def percentile_stretch(sample: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per band (first axis) low and high values of the 2-98 % stretch of ``sample`` (bands, h, w).

    A band without valid pixels, or a constant one, gets a range of 1 so that scaling stays finite."""
    lows, highs = [], []
    for b in range(sample.shape[0]):
        values = sample[b].astype(np.float64)
        ok = np.isfinite(values) if valid is None else (valid[b] & np.isfinite(values))
        values = values[ok]
        if values.size == 0:
            lows.append(0.0)
            highs.append(1.0)
            continue
        lo, hi = np.percentile(values, STRETCH_PERCENTILES)
        lows.append(float(lo))
        highs.append(float(hi) if hi > lo else float(lo) + 1.0)
    return np.asarray(lows), np.asarray(highs)


def _scale(data: np.ndarray, stretch: tuple[np.ndarray, np.ndarray] | None, divisor: float) -> np.ndarray:
    """(bands, h, w) raw band values -> float32: the stretch to [0, 1] if given, else value / ``divisor`` (255 for
    8-bit bands, 1: raw values); non-finite float values become NaN (nodata)."""
    if stretch is None:
        values = np.ascontiguousarray(data, dtype=np.float32)
        if divisor != 1.0:
            values = values / np.float32(divisor)
        elif values is data:
            values = values.copy()  # NaN is written below: never into the caller's array
    else:
        lo, hi = stretch
        scaled = (data.astype(np.float64) - lo[:, None, None]) / (hi - lo)[:, None, None]
        values = np.clip(np.nan_to_num(scaled, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0).astype(np.float32)
    if data.dtype.kind == "f":
        values[~np.isfinite(data)] = np.nan
    return values


def display_image(image: np.ndarray, model: InputConfig | None = None,
                  transform: TransformConfig | None = None) -> np.ndarray:
    """Pixels as read for ``model`` (bands, h, w) -> (3, h, w) float32 in [0, 1] to draw: the first three bands as
    RGB (fewer: the first as grey); 8-bit units as they are, raw units stretched over each band's training mean
    +- :data:`DISPLAY_STDS` standard deviations (``transform``'s), so every window of a raster is drawn alike;
    nodata (NaN) black."""
    image = np.asarray(image, dtype=np.float32)
    pick = [0, 1, 2] if image.shape[0] >= 3 else [0, 0, 0]
    out = image[pick]
    if model is not None and model.scale == 1.0 and transform is not None:
        mean = np.asarray(transform.image_mean, dtype=np.float32)[pick, None, None]
        std = np.asarray(transform.image_std, dtype=np.float32)[pick, None, None]
        out = (out - (mean - DISPLAY_STDS * std)) / (2 * DISPLAY_STDS * std)
    return np.nan_to_num(np.clip(out, 0.0, 1.0), nan=0.0).astype(np.float32, copy=False)


def overview_shape(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(rows, cols) of a ``width`` x ``height`` raster scaled to at most ``max_side`` px on its long side."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def nearest_index(size: int, out: int) -> np.ndarray:
    """For each of ``out`` samples along an axis of ``size`` pixels, the pixel whose area holds the sample's
    centre (GDAL's nearest-neighbour decimation); non-decreasing."""
    return np.minimum(((np.arange(out) + 0.5) * size / out).astype(np.int64), size - 1)


class Overview:
    """The raster at most ``max_side`` px on its long side (nearest pixel, as :meth:`GdalRaster._decimated`),
    assembled from the windows a tiled prediction reads anyway, as a picture: ``display`` turns the sampled
    pixels (the model's bands and units) into RGB in [0, 1] (:func:`display_image`; None: they are that).

    Why not a read of its own: a second pass over the raster decodes every block again (a third of a second
    for a 4,000 px GeoTIFF, more than the maps take to write). Windows never read (entirely nodata, or
    unreadable in a truncated file) stay black, so the picture shows what was predicted. The picture is kept
    as 8-bit, what its PNG holds, a quarter of the memory of float pixels for the whole prediction; with
    ``raw`` the samples are kept as they come (float32), for a caller that stretches them itself."""

    def __init__(self, width: int, height: int, max_side: int, bands: int = 3,
                 display: Callable[[np.ndarray], np.ndarray] | None = None, raw: bool = False) -> None:
        rows, cols = overview_shape(width, height, max_side)
        self.rows, self.cols = nearest_index(height, rows), nearest_index(width, cols)
        self.image = np.zeros((bands, rows, cols), dtype=np.float32 if raw else np.uint8)
        self.display, self.raw = display, raw

    def add(self, window: Window, image: np.ndarray) -> None:
        """Copy the samples that fall in ``window`` from its pixels ``image`` (bands, h, w)."""
        r0, r1 = np.searchsorted(self.rows, (window.y, window.y + window.height))
        c0, c1 = np.searchsorted(self.cols, (window.x, window.x + window.width))
        if r1 > r0 and c1 > c0:
            part = image.take(self.rows[r0:r1] - window.y, axis=1).take(self.cols[c0:c1] - window.x, axis=2)
            if self.raw:
                self.image[:, r0:r1, c0:c1] = part
                return
            part = self.display(part) if self.display is not None else np.nan_to_num(part, nan=0.0)
            self.image[:, r0:r1, c0:c1] = to_uint8(part)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 (clipped, rounded): the step every picture of harnet takes."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


class GdalRaster:
    """A raster read through rasterio, one window at a time.

    ``model``: the input of the model the windows are for (None: an RGB model; see the module docstring).
    ``own_units``: the training view (:mod:`harnet.deploy.image_bands`): ``bands`` (default: all) in their own
    units, /255 for 8-bit bands and raw otherwise, with no model to check them against."""

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None, model: InputConfig | None = None,
                 own_units: bool = False) -> None:
        import rasterio

        self.path = str(path)
        try:
            self._ds: Any = rasterio.open(self.path)
        except Exception as e:
            raise BadImageError(f"{self.path}: not a raster GDAL can read ({first_line(e)})") from None
        try:
            self._setup(bands, model, own_units)
        except BaseException:
            self._ds.close()
            raise

    def _setup(self, bands: Sequence[int] | None, model: InputConfig | None, own_units: bool) -> None:
        ds = self._ds
        self.width, self.height = int(ds.width), int(ds.height)
        count = int(ds.count)
        self.bands: tuple[int, ...]
        if own_units or (model is not None and not model.is_rgb):
            if own_units:
                self.bands = tuple(bands) if bands else tuple(range(1, count + 1))
                if max(self.bands) > count:
                    raise BadImageError(f"{self.path}: band {max(self.bands)} asked for, the raster has "
                                        f"{_plural(count)}")
            else:
                assert model is not None
                self.bands = model_bands(self.path, count, model, bands)
            dtype = band_dtype(self.path, [ds.dtypes[b - 1] for b in self.bands])
            if model is not None and not own_units:
                check_dtype(self.path, dtype, model)
            self.divisor = 255.0 if dtype == "uint8" else 1.0
        else:
            self.bands = _rgb_bands(count, bands, self.path)
            dtype = str(np.dtype(ds.dtypes[self.bands[0] - 1]))
            self.divisor = 255.0
        self.dtype = dtype
        self.crs = ds.crs.to_wkt() if ds.crs is not None else None
        t = ds.transform
        self.transform: Affine6 | None = (t.a, t.b, t.c, t.d, t.e, t.f) if self.crs is not None else None
        gcps, _ = ds.gcps
        self.georef_note = ("georeferenced by ground control points (GCPs), not by an affine transform: warp it "
                            "first (gdalwarp -t_srs EPSG:... in.tif out.tif)") if self.crs is None and gcps else None
        # Masks are read only where the raster has nodata or a mask band: the masked read costs a second pass.
        self.has_nodata = ds.nodata is not None or any(
            "all_valid" not in [f.name for f in flags] for flags in ds.mask_flag_enums)
        # The RGB view of bands that are not 8-bit: the display-style stretch (no model units to keep).
        rgb_view = not own_units and (model is None or model.is_rgb)
        self.stretch = self._stretch() if rgb_view and dtype != "uint8" else None

    def _read(self, window: Window | None = None, masked: bool = False) -> Any:
        from rasterio.windows import Window as RioWindow

        unique = sorted(set(self.bands))
        rio_window = None if window is None else RioWindow(window.x, window.y, window.width, window.height)
        import rasterio

        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            data = self._ds.read(unique, window=rio_window, masked=masked)
        order = [unique.index(b) for b in self.bands]
        return data[order]

    def _decimated(self, shape: tuple[int, int], masked: bool = False) -> Any:
        """The whole raster at ``shape`` (rows, cols), nearest pixel, read in full-resolution strips.

        Why not GDAL's own ``out_shape`` read: on a tiled, compressed GeoTIFF without overviews it
        decodes blocks again for every output row (36 s for a 4,000 px raster whose full read takes
        0.2 s). A strip of :data:`DECIMATE_STRIP_ROWS` rows bounds the memory whatever the width."""
        rows, cols = nearest_index(self.height, shape[0]), nearest_index(self.width, shape[1])
        parts = []
        for top in range(0, self.height, DECIMATE_STRIP_ROWS):
            wanted = rows[(rows >= top) & (rows < top + DECIMATE_STRIP_ROWS)] - top
            if wanted.size:
                height = min(DECIMATE_STRIP_ROWS, self.height - top)
                parts.append(self._read(Window(0, top, self.width, height), masked=masked)[:, wanted][:, :, cols])
        return np.ma.concatenate(parts, axis=1) if masked else np.concatenate(parts, axis=1)

    def _stretch(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            sample = self._decimated(overview_shape(self.width, self.height, STRETCH_OVERVIEW), masked=True)
        except Exception as e:
            raise BadImageError(f"{self.path}: cannot read an overview for the 2-98 % stretch "
                                f"({first_line(e)})") from None
        return percentile_stretch(np.asarray(sample.data), ~np.ma.getmaskarray(sample))

    def read(self, window: Window) -> np.ndarray | None:
        try:
            data = self._read(window, masked=self.has_nodata)
        except Exception as e:  # a corrupt block, a file truncated on disk
            raise BadImageError(f"{self.path}: window x={window.x} y={window.y} {window.width}x{window.height} "
                                f"unreadable ({first_line(e)})") from None
        mask = None
        if self.has_nodata:
            mask = np.ma.getmaskarray(data)
            if mask.all():
                return None
            data = np.ma.getdata(data)
        values = _scale(data, self.stretch, self.divisor)
        if mask is not None and mask.any():
            values[mask] = np.nan
        return values

    def close(self) -> None:
        self._ds.close()


class PilRaster:
    """A plain image (PNG, JPEG, ...) decoded once by PIL, as :func:`harnet.data.image_io.load_image` decodes it
    (8-bit RGB and grey kept as uint8, 3 bytes a pixel; other modes as float RGB). PIL cannot read these
    formats in windows, so the image's size is bounded by memory, unlike a GeoTIFF read through rasterio.
    For a non-RGB ``model`` its 3 decoded channels are the bands the model chooses from, as in training."""

    def __init__(self, path: str | Path, bands: Sequence[int] | None = None,
                 model: InputConfig | None = None) -> None:
        self.path = str(path)
        self.crs: str | None = None
        self.transform: Affine6 | None = None
        self.georef_note: str | None = None
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: image file not found")
        chosen: tuple[int, ...] | None = None
        if model is not None and not model.is_rgb:
            if model.dtype != "uint8":
                extra = ("" if rasterio_available() or p.suffix.lower() not in GDAL_SUFFIXES
                         else f"; its {model.dtype} bands are read through rasterio: {GEO_EXTRA}")
                raise BadImageError(f"{p}: an 8-bit image read by PIL, the model reads {model.describe()}{extra}")
            chosen = model_bands(self.path, 3, model, bands)
        elif bands and tuple(bands) != (1, 2, 3):
            chosen = _rgb_bands(3, bands, self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(p) as image:
                    plain = image.mode in ("RGB", "L") and image.getexif().get(0x0112, 1) == 1
                    array = np.asarray(image.convert("RGB")) if plain else pil_to_rgb_array(image)
        except Exception as e:
            raise BadImageError(f"{p}: not a readable image file ({first_line(e)}){tiff_hint(p)}") from None
        if chosen is not None and chosen != (1, 2, 3):
            array = array[:, :, [b - 1 for b in chosen]]
        self._array = array
        self.height, self.width = int(array.shape[0]), int(array.shape[1])

    def read(self, window: Window) -> np.ndarray:
        part = self._array[window.y : window.y + window.height, window.x : window.x + window.width]
        values = np.asarray(part, dtype=np.float32) / np.float32(255.0) if part.dtype == np.uint8 else part
        return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)

    def close(self) -> None:
        self._array = np.empty((0, 0, 3), dtype=np.uint8)


class ArrayRaster:
    """An image already in memory (float CHW numpy in the model's units, RGB in [0, 1] by default; NaN where
    nodata) seen as a raster: what evaluation and ``Predictor.predict_tiled`` on an array tile."""

    def __init__(self, image: np.ndarray, name: str = "<image>") -> None:
        self.path = name
        self.image = np.asarray(image, dtype=np.float32)
        self.height, self.width = int(image.shape[-2]), int(image.shape[-1])
        self.crs: str | None = None
        self.transform: Affine6 | None = None
        self.georef_note: str | None = None

    def read(self, window: Window) -> np.ndarray:
        return self.image[:, window.y : window.y + window.height, window.x : window.x + window.width]

    def close(self) -> None:
        pass


def rasterio_available() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def band_dtype(path: str, dtypes: Sequence[str]) -> str:
    """The one data type of a raster's (chosen) bands; bands of different types are refused, naming the file."""
    names = sorted({str(np.dtype(d)) for d in dtypes})
    if len(names) > 1:
        raise BadImageError(f"{path}: bands of different data types ({', '.join(names)}); harnet reads bands of one "
                            "type (convert with gdal_translate -ot)")
    return names[0]


def open_raster(path: str | Path, bands: Sequence[int] | None = None, model: InputConfig | None = None) -> Raster:
    """The raster at ``path``: through rasterio for GDAL formats (GeoTIFF, ...) when it is installed, else PIL;
    its windows read for ``model`` (None: an RGB model), ``bands`` chosen (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image file not found")
    if p.stat().st_size == 0:
        raise BadImageError(f"{p}: empty file (0 bytes)")
    if p.suffix.lower() in GDAL_SUFFIXES and rasterio_available():
        return GdalRaster(p, bands, model)
    return PilRaster(p, bands, model)
