"""Detections drawn on the image with PIL alone, the look of ``harnet predict``'s pictures: one
colour per class, a "name score" tag above each box, small images upscaled so labels stay legible."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harnet.deploy.raster import to_uint8

# matplotlib's tab10, cycled beyond ten classes.
CLASS_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
DRAW_MIN_SIZE = 512
# The upscaling for legible labels stops where the long side reaches this: a 50,000 x 8 px strip would
# otherwise become a picture of a million pixels a side.
DRAW_MAX_SIDE = 4096


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int], scores: Sequence[float],
                    class_names: Sequence[str], min_size: int = DRAW_MIN_SIZE) -> Image.Image:
    """``image``: CHW RGB, float in [0, 1] or uint8 (one channel is drawn as grey); ``boxes`` (n, 4) XYXY in its
    pixels.

    An image whose short side is under ``min_size`` is upscaled (bilinear, the long side at most
    :data:`DRAW_MAX_SIDE`) and line width and font size follow the drawing's size, so a 128 px image still
    gets legible labels. Each class has its own colour; the "name score" tag sits above its box (inside it at
    the top edge), and higher scores are drawn last, on top."""
    image = np.asarray(image)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    pixels = (image if image.dtype == np.uint8 else to_uint8(image)).transpose(1, 2, 0)
    picture = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    scale = max(1.0, min(min_size / max(1, min(picture.size)), DRAW_MAX_SIDE / max(picture.size)))
    if scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.Resampling.BILINEAR)
    short = min(picture.size)
    width, font = max(2, round(short / 200)), _font(max(12, round(short / 28)))
    draw = ImageDraw.Draw(picture)
    pad = max(1, width // 2)
    tags: dict[tuple[int, str], Image.Image] = {}  # a score tag is laid out and rendered once, then pasted
    for k in sorted(range(len(labels)), key=lambda i: float(scores[i])):
        x0, y0, x1, y1 = (float(v) * scale for v in boxes[k])
        label = int(labels[k])
        color = CLASS_COLORS[label % len(CLASS_COLORS)]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        text = f"{class_names[label]} {float(scores[k]):.2f}"
        tag = tags.get((label, text))
        if tag is None:
            tag = tags[(label, text)] = _tag(text, font, color, pad)
        ty = y0 - tag.height if y0 - tag.height >= 0 else y0
        picture.paste(tag, (round(x0), round(ty)))
    return picture


def _tag(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, color: tuple[int, int, int],
         pad: int) -> Image.Image:
    """The "name score" tag: ``text`` on a box of the class colour, black or white by the colour's luminance."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    tag = Image.new("RGB", (round(right - left) + 2 * pad + 1, round(bottom - top) + 2 * pad + 1), color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    ImageDraw.Draw(tag).text((pad - left, pad - top), text, font=font,
                             fill=(0, 0, 0) if luminance > 150 else (255, 255, 255))
    return tag
