"""Generators for every kind of bad (and merely odd) input file the robustness suite feeds harnet.

Each image case writes one file and says what harnet must do with it: ``HANDLED`` (converted and
used) or an error whose one-line message contains ``message`` and names the file. ``decode_only``
marks files whose header is fine but whose pixels are not: only a full decode (``--skip-bad``, or the
moment training reaches them) can find those.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests_support import TINY

HANDLED = "handled"


def rgb_pixels(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A noisy image with a bright square in the middle, so a box around it means something."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = (230, 40, 40)
    return pixels


def write_rgb(path: Path, width: int = 48, height: int = 40, seed: int = 0) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_pixels(width, height, seed)).save(path)
    return width, height


def _save(image: Image.Image, path: Path, **kwargs: Any) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return image.size


def _truncated(path: Path, fmt: str) -> tuple[int, int]:
    buffer = io.BytesIO()
    Image.fromarray(rgb_pixels(64, 48)).save(buffer, format=fmt)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return 64, 48


def _exif_rotated(path: Path, annotate_displayed: bool) -> tuple[int, int]:
    image = Image.fromarray(rgb_pixels(48, 32))
    exif = image.getexif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 32 wide, 48 high
    image.save(path, exif=exif)
    return (32, 48) if annotate_displayed else (48, 32)


def _palette(path: Path, transparency: bool) -> tuple[int, int]:
    image = Image.fromarray(rgb_pixels(40, 40)).convert("P")
    return _save(image, path, **({"transparency": 0} if transparency else {}))


def _gray16(path: Path) -> tuple[int, int]:
    pixels = (rgb_pixels(40, 30)[:, :, 0].astype(np.uint16) * 257)
    return _save(Image.fromarray(pixels), path)


def _float_tiff(path: Path) -> tuple[int, int]:
    pixels = rgb_pixels(40, 30)[:, :, 0].astype(np.float32) / 255
    return _save(Image.fromarray(pixels, mode="F"), path)


def _rasterio_installed() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def _not_found(path: Path) -> tuple[int, int]:
    return 40, 40


def _directory(path: Path) -> tuple[int, int]:
    path.mkdir(parents=True)
    return 40, 40


def _text(path: Path) -> tuple[int, int]:
    path.write_text("this is not an image\n")
    return 40, 40


def _garbage_after_signature(path: Path) -> tuple[int, int]:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return 40, 40


def _huge(path: Path) -> tuple[int, int]:
    # A bilevel 10k x 10k PNG is a 12 MB bitmap that compresses to a few kB: cheap to make.
    return _save(Image.new("1", (10_000, 10_000)), path)


@dataclass(frozen=True)
class ImageCase:
    name: str
    suffix: str
    write: Callable[[Path], tuple[int, int]]  # writes the file, returns the (width, height) to annotate
    outcome: str  # HANDLED, or the text the error message must contain
    error: type[Exception] = ValueError
    decode_only: bool = False


IMAGE_CASES: list[ImageCase] = [
    # Converted correctly (see harnet.data.image_io).
    ImageCase("grayscale", ".png", lambda p: _save(Image.fromarray(rgb_pixels(40, 30)).convert("L"), p), HANDLED),
    ImageCase("bilevel", ".png", lambda p: _save(Image.fromarray(rgb_pixels(40, 30)).convert("1"), p), HANDLED),
    ImageCase("rgba", ".png", lambda p: _save(Image.fromarray(rgb_pixels(40, 30)).convert("RGBA"), p), HANDLED),
    ImageCase("gray_alpha", ".png", lambda p: _save(Image.fromarray(rgb_pixels(40, 30)).convert("LA"), p), HANDLED),
    ImageCase("palette", ".png", lambda p: _palette(p, transparency=False), HANDLED),
    ImageCase("palette_transparent", ".png", lambda p: _palette(p, transparency=True), HANDLED),
    ImageCase("gray16", ".png", _gray16, HANDLED),
    # With rasterio a float TIFF is raster data (one band of float32, its own units): beside 8-bit images it is a
    # band mismatch, named; PIL alone reads it as grey in [0, 1].
    ImageCase("float32_tiff", ".tif", _float_tiff,
              "every image of a dataset needs the same bands" if _rasterio_installed() else HANDLED),
    ImageCase("cmyk_jpeg", ".jpg", lambda p: _save(Image.fromarray(rgb_pixels(40, 30)).convert("CMYK"), p), HANDLED),
    ImageCase("exif_rotated", ".jpg", lambda p: _exif_rotated(p, annotate_displayed=True), HANDLED),
    ImageCase("exif_rotated_png", ".png", lambda p: _exif_rotated(p, annotate_displayed=True), HANDLED),
    ImageCase("tiny_1px", ".png", lambda p: _save(Image.new("RGB", (1, 1), (200, 0, 0)), p), HANDLED),
    ImageCase("tiny_2x3", ".png", lambda p: _save(Image.new("RGB", (2, 3), (200, 0, 0)), p), HANDLED),
    # Errors (or skipped with --skip-bad).
    ImageCase("missing", ".png", _not_found, "image file not found", FileNotFoundError),
    ImageCase("directory", ".png", _directory, "image file not found", FileNotFoundError),
    ImageCase("zero_bytes", ".png", lambda p: (p.write_bytes(b""), (40, 40))[1], "empty file (0 bytes)"),
    ImageCase("text_file", ".png", _text, "not a readable image file"),
    ImageCase("broken_header", ".png", _garbage_after_signature, "not a readable image file"),
    ImageCase("truncated_png", ".png", lambda p: _truncated(p, "PNG"), "cannot decode image data", decode_only=True),
    ImageCase("truncated_jpeg", ".jpg", lambda p: _truncated(p, "JPEG"), "cannot decode image data",
              decode_only=True),
    ImageCase("huge_10k", ".png", _huge, "above the 67 Mpx limit"),
    ImageCase("strip_1x100", ".png", lambda p: _save(Image.new("RGB", (100, 1)), p), "more than 32:1"),
    ImageCase("exif_annotated_as_stored", ".jpg", lambda p: _exif_rotated(p, annotate_displayed=False),
              "(after EXIF orientation) but the annotations say 48x32"),
    ImageCase("wrong_size_in_json", ".png", lambda p: (write_rgb(p, 40, 30), (41, 30))[1],
              "image is 40x30 (after EXIF orientation) but the annotations say 41x30"),
]
CASES_BY_NAME = {case.name: case for case in IMAGE_CASES}


def coco_dict(images: list[tuple[int, str, int, int]], boxes: dict[int, list[list[float]]] | None = None,
              categories: tuple[str, ...] = ("thing", "other")) -> dict[str, Any]:
    """A COCO instances dict: ``images`` as (id, file_name, width, height), ``boxes[id]`` as xywh lists."""
    boxes = boxes or {}
    annotations = []
    for image_id, image_boxes in boxes.items():
        for box in image_boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    return {
        "images": [{"id": i, "file_name": f, "width": w, "height": h} for i, f, w, h in images],
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(categories)],
    }


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def box_around_middle(width: int, height: int) -> list[float]:
    """The xywh box of the square :func:`rgb_pixels` draws (at least 1 px)."""
    return [width // 4, height // 4, max(1, width // 2), max(1, height // 2)]


def make_coco_split(root: Path, split: str, count: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` good 64x48 images with one box each: (image folder, annotation file)."""
    images = root / split
    entries, boxes = [], {}
    for k in range(1, count + 1):
        name = f"{split}_{k}.png"
        size = write_rgb(images / name, 64, 48, seed=seed + k)
        entries.append((k, name, *size))
        boxes[k] = [box_around_middle(*size)]
    return images, write_json(root / f"{split}.json", coco_dict(entries, boxes))


def coco_args(root: Path, out: Path, *extra: str) -> list[str]:
    """``harnet train`` arguments: TINY model on the COCO splits under ``root``, 2 steps."""
    sets = [*TINY, "data.format=coco", f"data.train_images={root / 'train'}",
            f"data.train_annotations={root / 'train.json'}", f"data.val_images={root / 'val'}",
            f"data.val_annotations={root / 'val.json'}", "train.max_steps=2", "train.checkpoint_every=1",
            "train.threads=1", f"output_dir={out}", *extra]
    args = ["train", "--config", "demo", "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return args
