"""The model's input from its training data: band count and data type as found, normalisation per band.

An 8-bit RGB dataset keeps the config's ``transform.image_mean``/``image_std`` (the ImageNet statistics of
[0, 1] RGB, or the 0.5 of an EfficientNet-Lite body): nothing changes for it. Other data (16-bit or float
bands, more or fewer than 3 bands) has no such convention: raw 16-bit values normalised with [0, 1] RGB
statistics would feed the network numbers in the thousands. Its mean and standard deviation per band are
measured once on the training images, before training, and stored in the model config
(``model.input``, ``transform.image_mean``/``image_std``): they travel in the checkpoint and the export
metadata, so evaluation, export, prediction and every runtime normalise new images with the same numbers.

The statistics come from a bounded sample: at most :data:`STATS_IMAGES` images spread over the training
set, each read on a regular grid of at most :data:`STATS_PIXELS` pixels; nodata pixels (NaN in the loaded
images) are left out. A band whose sampled pixels are constant gets a standard deviation of 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from harnet.config.model import HARNetConfig
from harnet.data.image_io import load_bands
from harnet.data.records import RecordDataset

STATS_IMAGES = 64
STATS_PIXELS = 16384
# Printed values: enough digits for raw 16-bit means and [0, 1] ones alike.
_DIGITS = 4


def band_statistics(dataset: RecordDataset, max_images: int = STATS_IMAGES,
                    max_pixels: int = STATS_PIXELS) -> tuple[tuple[float, ...], tuple[float, ...], int]:
    """Per-band (mean, std) of ``dataset``'s images as it loads them (its ``bands``, their units), nodata excluded,
    and the number of images sampled. Deterministic: the same images and pixels every time."""
    records = dataset.records
    if not records:
        raise ValueError("band statistics of an empty dataset")
    picks = np.unique(np.linspace(0, len(records) - 1, min(max_images, len(records))).round().astype(int))
    sums: np.ndarray | None = None
    squares: np.ndarray | None = None
    counts: np.ndarray | None = None
    for i in picks.tolist():
        image = load_bands(records[i].path, dataset.bands).numpy()
        step = max(1, int(np.ceil(np.sqrt(image.shape[1] * image.shape[2] / max_pixels))))
        values = image[:, ::step, ::step].reshape(image.shape[0], -1).astype(np.float64)
        valid = np.isfinite(values)
        values = np.where(valid, values, 0.0)
        if sums is None:
            sums, squares, counts = (np.zeros(image.shape[0]) for _ in range(3))
        assert squares is not None and counts is not None
        sums += values.sum(axis=1)
        squares += (values * values).sum(axis=1)
        counts += valid.sum(axis=1)
    assert sums is not None and squares is not None and counts is not None
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    var = np.divide(squares, counts, out=np.zeros_like(sums), where=counts > 0) - mean * mean
    std = np.sqrt(np.maximum(var, 0.0))
    std = np.where(std > 1e-6 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std), len(picks)


def resolve_input(model: HARNetConfig, dataset: RecordDataset) -> tuple[HARNetConfig, str | None]:
    """``model`` with the input ``dataset`` makes (``dataset.input``: channels, bands, data type) and its
    normalisation, and a one-line note when that replaced the config's ``image_mean``/``image_std``.

    8-bit data keep the config's mean/std when they have one value per channel (3 for RGB). Other data keep them
    only when the config already describes them (``model.input`` equal to the data's: a resumed run, a config
    written from one); otherwise :func:`band_statistics` replaces them."""
    data = dataset.input
    if data is None:
        raise ValueError("the dataset's images were not checked (RecordDataset.check_images)")
    t = model.transform
    fits = len(t.image_mean) == data.channels and (data.dtype == "uint8" or model.input == data)
    if fits:
        return replace(model, input=data), None
    mean, std, images = band_statistics(dataset)
    was = len(t.image_mean)
    note = (f"{data.describe()}: transform.image_mean/image_std are per-band statistics of the training data "
            f"({images} of {len(dataset)} images sampled, nodata excluded), mean {_rounded(mean)}, std "
            f"{_rounded(std)}, in place of the config's {was} value{'s' * (was != 1)}")
    return replace(model, input=data, transform=replace(t, image_mean=mean, image_std=std)), note


def _rounded(values: Sequence[float]) -> list[float]:
    return [float(f"{v:.{_DIGITS}g}") for v in values]
