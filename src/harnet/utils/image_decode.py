"""Decoding image files into float RGB arrays, without torch: datasets (``harnet.data.image_io``) and
the torch-free deployment runtime (``harnet.deploy``) read pixels through the same code.

PIL's own ``convert("RGB")`` is right for 8-bit modes but wrong for the rest: it clips 16/32-bit
integer images to 0..255 instead of rescaling them (almost everything would saturate to white), and
it drops an alpha channel, exposing whatever undefined colour fully transparent pixels happen to
store. Those cases are handled here so that every dataset sees the same correct pixels.

What is converted (not an error): greyscale, bilevel, palette (with or without transparency), RGBA/LA
(composited on white), 16-bit and float greyscale (rescaled), CMYK and YCbCr, and EXIF orientation
(applied, so boxes are in the orientation a viewer shows, as COCO tools assume). What is refused, with
a one-line :class:`BadImageError` naming the file: empty files, files PIL cannot identify, truncated or
corrupt pixel data, images above :data:`MAX_PIXELS` (decoding a 10k x 10k image as float32 takes
1.2 GB per copy; tile such images first) and strips beyond :data:`MAX_ASPECT_RATIO`. A missing file
is a ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from harnet.utils.errors import first_line

# Integer modes wider than 8 bit. PIL reports 16-bit PNG/TIFF greyscale as one of these; we treat the
# full 16-bit range as [0, 1] because the files carry no other information about their white point.
_WIDE_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Modes whose alpha channel must be composited rather than dropped.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Fully transparent pixels become this colour; white matches how viewers show transparent images.
_ALPHA_BACKGROUND = (255, 255, 255)
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}

# Largest image (width x height) we decode: 8192 x 8192. Above it one float32 RGB copy is over 0.8 GB
# and a data-loader batch of them exhausts memory long after training started; refusing up front, with
# the size in the message, is kinder. Raise it here (module attribute) if your machine can afford it.
MAX_PIXELS = 8192 * 8192
# Longest side / shortest side. The model scales the longer side to at most ``transform.max_size``; past
# about max_size:1 the shorter side rounds to 0 px and torchvision's resize fails inside training with
# no file named. 32:1 still leaves 2 px at the smallest max_size we use (64); real photos and panoramas
# stay far below it. A 1x1 image is fine (it is upscaled like any other).
MAX_ASPECT_RATIO = 32


class BadImageError(ValueError):
    """An image file that exists but cannot be used; the message names the file and the problem."""


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8; 1 (as stored) when the EXIF block is absent or unreadable, as viewers do.

    PNG stores EXIF in an ``eXIf`` chunk that the spec places before the pixels, where ``Image.open``
    has already seen it; asking PIL for a late one means decoding the whole file, which made the
    header-only size check as slow as a full decode. Late chunks are therefore ignored (consistently:
    the decoder uses this function too).
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # corrupt EXIF: PIL raises anything from SyntaxError to struct.error
        return 1


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open`` (header only, pixels not decoded yet) with one-line errors naming the file.

    Checks, in order: the file exists, is not empty, is an image PIL can identify, and is at most
    :data:`MAX_PIXELS` pixels (PIL's own decompression-bomb guard is subsumed by this limit).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as e:
        raise BadImageError(f"{path}: image too large to decode ({first_line(e)})") from None
    except Exception as e:  # UnidentifiedImageError, or a plugin choking on a broken header
        raise BadImageError(f"{path}: not a readable image file ({first_line(e)}){tiff_hint(path)}") from None
    with image:
        check_size(path, *image.size)
        yield image


def tiff_hint(path: str | Path) -> str:
    """What to add to PIL's refusal of a TIFF: PIL reads only 8-bit RGB-like ones, the rest need rasterio."""
    if Path(path).suffix.lower() not in (".tif", ".tiff"):
        return ""
    return '; multi-band and 16-bit TIFFs are read through rasterio: pip install "harnet[geo]"'


def check_size(path: str | Path, width: int, height: int) -> None:
    """Refuse an image above :data:`MAX_PIXELS` or beyond :data:`MAX_ASPECT_RATIO`, naming the file (whoever
    reads it: PIL here, rasterio for raster bands)."""
    if width * height > MAX_PIXELS:
        raise BadImageError(
            f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} Mpx), above the "
            f"{MAX_PIXELS / 1e6:.0f} Mpx limit (harnet.utils.image_decode.MAX_PIXELS); tile or downscale it"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise BadImageError(
            f"{path}: image is {width}x{height}, more than {MAX_ASPECT_RATIO}:1 "
            "(harnet.utils.image_decode.MAX_ASPECT_RATIO); the resized short side would vanish"
        )


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Return ``image`` as a float32 ``(H, W, 3)`` array in [0, 1], whatever its PIL mode.

    EXIF orientation is applied first, so boxes annotated on the image as a viewer shows it line up.
    """
    if _exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in _WIDE_INT_MODES:
        grey = np.asarray(image, dtype=np.float64)
        grey = np.clip(grey / 65535.0, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        # Float images have no defined range; assume the common [0, 1] convention and clip outliers.
        grey = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.repeat(np.clip(grey, 0.0, 1.0)[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    return rgb / 255.0


def _decode(image: Image.Image, name: object) -> np.ndarray:
    try:
        return pil_to_rgb_array(image)
    except MemoryError:
        raise
    except Exception as e:  # truncated data, bad compressed stream, unsupported mode conversion, ...
        raise BadImageError(f"{name}: cannot decode image data ({first_line(e)}){tiff_hint(str(name))}") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` as :func:`load_image` will see it, reading only the file header.

    Formats without stored sizes (CSV) need this to clip boxes and build COCO ground truth without
    decoding every image up front. Errors as :func:`open_image`.
    """
    with open_image(path) as image:
        width, height = image.size
        orientation = _exif_orientation(image)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return width, height
