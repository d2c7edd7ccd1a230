"""Decoding image files into the float RGB tensors every dataset returns.

PIL's own ``convert("RGB")`` is right for 8-bit modes but wrong for the rest: it clips 16/32-bit
integer images to 0..255 instead of rescaling them (almost everything would saturate to white), and
it drops an alpha channel, exposing whatever undefined colour fully transparent pixels happen to
store. Those cases are handled here so that every dataset sees the same correct pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torchvision import tv_tensors

# Integer modes wider than 8 bit. PIL reports 16-bit PNG/TIFF greyscale as one of these; we treat the
# full 16-bit range as [0, 1] because the files carry no other information about their white point.
_WIDE_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Modes whose alpha channel must be composited rather than dropped.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Fully transparent pixels become this colour; white matches how viewers show transparent images.
_ALPHA_BACKGROUND = (255, 255, 255)
# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Return ``image`` as a float32 ``(H, W, 3)`` array in [0, 1], whatever its PIL mode.

    EXIF orientation is applied first, so boxes annotated on the image as a viewer shows it line up.
    """
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


def load_image(path: str | Path | IO[bytes]) -> tv_tensors.Image:
    """Load an image file as a ``tv_tensors.Image`` float32 ``(3, H, W)`` in [0, 1].

    Raises ``FileNotFoundError`` naming the file, because a bare PIL error deep inside a DataLoader
    worker would not say which of thousands of files is missing.
    """
    if isinstance(path, (str, Path)) and not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as image:
        array = pil_to_rgb_array(image)
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))


def image_size(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` as :func:`load_image` will see it, reading only the file header.

    Formats without stored sizes (CSV) need this to clip boxes and build COCO ground truth without
    decoding every image up front.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return width, height
