"""A synthetic multi-band dataset whose objects show in one band only: N-band training, tested.

Each image is an N-band GeoTIFF of one data type (16-bit by default) with a nodata value: bands other than
``signal_band`` hold a smooth field, noise and squares that are *not* objects (their distribution is the same
whatever the objects are), and ``signal_band`` holds the objects, squares brighter than their surroundings.
A detector reading every band can find them; one reading only the other bands (an RGB model of bands 1-3)
cannot do better than chance. Some images have a nodata strip along one side (value ``nodata`` in every
band), where no object lies, so the nodata rule (pixels filled with the training mean) is exercised too.

The layout is the COCO one of :func:`harnet.data.shapes.generate_shapes` (``train/``, ``val/``,
``annotations/instances_{train,val}.json``), one class ``object``; the same seed gives the same pixels.
Writing GeoTIFFs needs rasterio (the ``[geo]`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harnet.data.coco_writer import GeneratedDataset, Split, coco_annotation, dataset_paths, write_splits

CLASS_NAME = "object"
# Band values (16-bit units; scaled to the data type's range for others): background level and spread, and how
# much brighter an object is in the signal band.
_BACKGROUND = (1500.0, 3500.0)
_NOISE = 120.0
_CONTRAST = 2000.0
_STRIP_PROBABILITY = 0.3


def _squares(rng: np.random.Generator, size: int, count: int, lo: int, hi: int,
             keep_out: tuple[int, int, int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping squares (x0, y0, x1, y1) of side lo..hi inside the image and outside
    ``keep_out``."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(50 * count):
        if len(boxes) == count:
            break
        side = int(rng.integers(lo, hi + 1))
        x0, y0 = (int(v) for v in rng.integers(0, size - side + 1, 2))
        box = (x0, y0, x0 + side, y0 + side)
        if keep_out is not None and _overlap(box, keep_out):
            continue
        if all(not _overlap(box, other, margin=2) for other in boxes):
            boxes.append(box)
    return boxes


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def render_band_image(rng: np.random.Generator, size: int, bands: int, signal_band: int,
                      dtype: np.dtype, nodata: float) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """One image (bands, size, size) of ``dtype`` and its object boxes."""
    unit = 1.0 if dtype.kind == "f" else min(1.0, float(np.iinfo(dtype).max) / 65535.0)
    strip = None
    if rng.random() < _STRIP_PROBABILITY:
        width = int(rng.integers(size // 8, size // 3))
        side = int(rng.integers(4))
        strip = ((0, 0, width, size), (size - width, 0, size, size), (0, 0, size, width),
                 (0, size - width, size, size))[side]
    objects = _squares(rng, size, int(rng.integers(1, 4)), size // 6, size // 3, keep_out=strip)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.empty((bands, size, size), dtype=np.float64)
    for b in range(bands):
        level = rng.uniform(*_BACKGROUND)
        gx, gy = rng.uniform(-300, 300, 2)
        image[b] = level + gx * xx + gy * yy + rng.normal(0.0, _NOISE, (size, size))
        if b + 1 == signal_band:
            for x0, y0, x1, y1 in objects:
                image[b, y0:y1, x0:x1] += _CONTRAST
        else:  # look-alikes, independent of the objects: the other bands say nothing about where they are
            for x0, y0, x1, y1 in _squares(rng, size, int(rng.integers(1, 4)), size // 6, size // 3):
                image[b, y0:y1, x0:x1] += rng.choice([-1.0, 1.0]) * _CONTRAST
    image *= unit
    if dtype.kind != "f":
        info = np.iinfo(dtype)
        image = np.clip(np.round(image), max(info.min, nodata + 1), info.max)
    if strip is not None:
        x0, y0, x1, y1 = strip
        image[:, y0:y1, x0:x1] = nodata
    return image.astype(dtype), objects


def generate_band_shapes(out_dir: str | Path, num_images: int = 80, size: int = 64, seed: int = 0, bands: int = 4,
                         signal_band: int = 4, dtype: str = "uint16", nodata: float = 0.0,
                         val_fraction: float = 0.25) -> GeneratedDataset:
    """Write the dataset under ``out_dir`` (see the module docstring) and return where it went. The last
    ``round(num_images * val_fraction)`` images are the val split."""
    if not 1 <= signal_band <= bands:
        raise ValueError(f"signal_band {signal_band}: a band of the {bands}")
    if num_images < 2 or size < 32:
        raise ValueError("need num_images >= 2 and size >= 32")
    try:
        import rasterio
        from rasterio.transform import from_origin
    except ImportError:
        raise RuntimeError('writing GeoTIFFs needs rasterio: pip install "harnet[geo]"') from None
    out = Path(out_dir)
    train_dir, val_dir, _, _ = dataset_paths(out)
    num_val = round(num_images * val_fraction)
    splits: dict[str, Split] = {"train": ([], []), "val": ([], [])}
    kind = np.dtype(dtype)
    for index in range(num_images):
        rng = np.random.default_rng([seed, bands, signal_band, index])
        pixels, objects = render_band_image(rng, size, bands, signal_band, kind, nodata)
        split = "train" if index < num_images - num_val else "val"
        image_id, file_name = index + 1, f"{index + 1:06d}.tif"
        # Each image at its own place on the map, as tiles cut from one raster are.
        transform = from_origin(500000.0 + index * size, 4000000.0, 1.0, 1.0)
        with rasterio.open((train_dir if split == "train" else val_dir) / file_name, "w", driver="GTiff",
                           width=size, height=size, count=bands, dtype=kind.name, crs="EPSG:32633",
                           transform=transform, nodata=nodata) as ds:
            ds.write(pixels)
        images, annotations = splits[split]
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for box in objects:
            annotations.append(coco_annotation(len(annotations) + 1, image_id, 1, box))
    categories = [{"id": 1, "name": CLASS_NAME, "supercategory": "object"}]
    description = (f"harnet band shapes, {bands} bands of {kind.name}, objects in band {signal_band}, seed={seed}, "
                   f"size={size}")
    return write_splits(out, splits, categories, description)
