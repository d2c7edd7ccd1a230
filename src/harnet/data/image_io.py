"""Image files -> the float tensors every dataset returns.

The decoding itself (modes, alpha, EXIF, size limits; see :mod:`harnet.utils.image_decode`; which bands of a
raster, in which units: :mod:`harnet.deploy.image_bands`) is torch-free so that ``harnet.deploy`` reads pixels
through the same code; this module wraps it in tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from harnet.deploy.image_bands import ImageBands, probe_image, read_image
from harnet.utils.errors import first_line
from harnet.utils.image_decode import (
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    BadImageError,
    _decode,
    image_size,
    open_image,
    pil_to_rgb_array,
)

__all__ = ["MAX_ASPECT_RATIO", "MAX_PIXELS", "BadImageError", "ImageBands", "image_size", "load_bands", "load_image",
           "open_image", "pil_to_rgb_array", "probe_image"]


def load_bands(path: str | Path, bands: Sequence[int] | None = None,
               info: ImageBands | None = None) -> tv_tensors.Image:
    """An image file as a ``tv_tensors.Image`` float32 ``(C, H, W)``: an ordinary image's RGB in [0, 1] exactly as
    :func:`load_image` gives it, a raster's bands in their own units with NaN where nodata
    (:func:`harnet.deploy.image_bands.read_image`); ``bands`` (1-based) picks some. ``info``: the file's
    :func:`probe_image`, when known."""
    return tv_tensors.Image(torch.from_numpy(read_image(path, bands, info)))


def load_image(path: str | Path | IO[bytes]) -> tv_tensors.Image:
    """Load an image file as a ``tv_tensors.Image`` float32 ``(3, H, W)`` in [0, 1].

    Raises ``FileNotFoundError`` or :class:`BadImageError` naming the file, because a bare PIL error deep
    inside a DataLoader worker would not say which of thousands of files is broken.
    """
    if isinstance(path, (str, Path)):
        with open_image(path) as image:
            array = _decode(image, path)
    else:
        name = getattr(path, "name", "<image stream>")
        try:
            image = Image.open(path)
        except Exception as e:
            raise BadImageError(f"{name}: not a readable image ({first_line(e)})") from None
        with image:
            array = _decode(image, name)
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
