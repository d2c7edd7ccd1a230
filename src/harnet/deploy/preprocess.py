"""Resize + normalise + pad in numpy, step for step as :mod:`harnet.modeling.preprocess` does it in
eval mode (torchvision's ``GeneralizedRCNNTransform``), so that an exported network sees the same
pixels on a device without torch as it does in ``harnet predict``.

The resize is ``F.interpolate(mode="bilinear", align_corners=False, recompute_scale_factor=True)``:
the output size is ``floor(side * scale)`` (Python floats), and each output pixel samples the input
at ``(i + 0.5) * in / out - 0.5`` (clamped at 0), in float32.

Why two copies: training keeps torchvision's transform (random sizes, targets resized with their images,
on the GPU); prediction, for every backend, uses this one so that it runs without torch.
tests/deploy/test_deploy_postprocess.py ties the two (``test_preprocess_matches_torchvision``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harnet.config.model import TransformConfig

Size = tuple[int, int]


@dataclass
class Batch:
    """What the exported network eats, plus the sizes post-processing needs."""

    images: np.ndarray  # (N, C, H, W) float32, normalised, zero-padded bottom/right
    image_sizes: list[Size]  # (h, w) of each resized image inside the padded batch
    original_sizes: list[Size]  # (h, w) of each input image


def resized_size(height: int, width: int, short: int, long: int) -> Size:
    """torchvision's test-time size: scale = min(short / min side, long / max side), each side
    ``floor(side * scale)``, in Python floats as torchvision computes them."""
    scale = min(short / min(height, width), long / max(height, width))
    return math.floor(height * scale), math.floor(width * scale)


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output row/column: the lower source index, the step to the upper one (0 at the edge) and
    the upper weight, as PyTorch's ``upsample_bilinear2d`` (align_corners=False) computes them."""
    scale = np.float32(in_size) / np.float32(out_size)
    real = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                      np.float32(0))
    low = real.astype(np.int64)
    step = (low < in_size - 1).astype(np.int64)
    return low, step, (real - low.astype(np.float32)).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: Size) -> np.ndarray:
    """(C, H, W) float32 -> (C, h, w): bilinear, align_corners=False, no antialiasing."""
    h, w = size
    y0, ys, ly = _source_index(h, image.shape[-2])
    x0, xs, lx = _source_index(w, image.shape[-1])
    hy, hx = (np.float32(1) - ly)[:, None], (np.float32(1) - lx)[None, :]
    ly, lx = ly[:, None], lx[None, :]
    top, bottom = image[:, y0, :], image[:, y0 + ys, :]
    upper = hx * top[:, :, x0] + lx * top[:, :, x0 + xs]
    lower = hx * bottom[:, :, x0] + lx * bottom[:, :, x0 + xs]
    out = hy * upper + ly * lower
    return out.astype(np.float32, copy=False)


def normalize(image: np.ndarray, cfg: TransformConfig) -> np.ndarray:
    """``(image - mean) / std`` per channel; nodata pixels (NaN) become 0, the band's training mean, as
    :mod:`harnet.modeling.preprocess` makes them in training."""
    if image.shape[0] != len(cfg.image_mean):
        raise ValueError(f"image has {image.shape[0]} channel(s), the model reads {len(cfg.image_mean)} "
                         "(transform.image_mean has one value per channel)")
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
    out = ((image - mean) / std).astype(np.float32, copy=False)
    nodata = np.isnan(out)
    if nodata.any():  # the test costs a fraction of the normalisation; most images have no nodata
        out[nodata] = 0.0
    return out


def preprocess(images: Sequence[np.ndarray], cfg: TransformConfig, scale: float = 1.0) -> Batch:
    """Float32 CHW images (the model's input channels, in its units: RGB in [0, 1] by default) of any sizes -> one
    normalised batch zero-padded bottom/right to a multiple of ``size_divisible`` (normalise, then resize, then
    pad: torchvision's order)."""
    short, long = cfg.test_sizes
    short, long = round(short * scale), round(long * scale)
    resized = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        size = resized_size(image.shape[-2], image.shape[-1], short, long)
        resized.append(resize_bilinear(normalize(image, cfg), size))
    d = float(cfg.size_divisible)
    height = int(math.ceil(max(r.shape[-2] for r in resized) / d) * d)
    width = int(math.ceil(max(r.shape[-1] for r in resized) / d) * d)
    batch = np.zeros((len(resized), resized[0].shape[0], height, width), dtype=np.float32)
    for i, r in enumerate(resized):
        batch[i, :, : r.shape[-2], : r.shape[-1]] = r
    return Batch(batch, [(r.shape[-2], r.shape[-1]) for r in resized],
                 [(int(im.shape[-2]), int(im.shape[-1])) for im in images])


def to_input_pixels(boxes: np.ndarray, resized: Size, original: Size) -> np.ndarray:
    """Boxes (n, 4) XYXY from resized-image pixels back to input-image pixels (torchvision's
    ``resize_boxes``: float32 ratios original / resized)."""
    ratio_h = np.float32(original[0]) / np.float32(resized[0])
    ratio_w = np.float32(original[1]) / np.float32(resized[1])
    ratios = np.array([ratio_w, ratio_h, ratio_w, ratio_h], dtype=np.float32)
    return (boxes.astype(np.float32) * ratios).astype(np.float32)
