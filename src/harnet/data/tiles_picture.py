"""``DIR/tiles.png``: the tile grid of ``harnet data tiles`` over each raster's overview, train and val coloured.

One look answers what a table of counts cannot: whether the labels sit on the objects (a layer in the wrong
CRS puts them in a corner or nowhere), where the val blocks fell, and which tiles were left out (nodata,
straddling the val border). PIL only; one panel per raster, stacked, at one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from harnet.deploy.draw import CLASS_COLORS
from harnet.deploy.raster import percentile_stretch

PANEL_SIDE = 1024
# Tile states -> outline colour: train blue, val orange (tab10's first two), dropped red, nodata grey.
STATE_COLORS = {"train": CLASS_COLORS[0], "val": CLASS_COLORS[1], "dropped": CLASS_COLORS[3],
                "nodata": (127, 127, 127)}
BOX_COLOR = (255, 230, 0)
# Above this many boxes a panel shows the tiles only: thousands of 1 px rectangles hide the grid.
MAX_BOXES_DRAWN = 20000
CAPTION_HEIGHT = 28


@dataclass
class Panel:
    """One raster's overview and what to draw on it, in raster pixels."""

    name: str
    overview: np.ndarray  # (bands, rows, cols) raw band values (1 or 3 bands)
    valid: np.ndarray  # (rows, cols) bool: not nodata
    width: int  # the raster's size
    height: int
    tiles: list[tuple[int, int, int, int, str]]  # x, y, w, h, state (a key of STATE_COLORS)
    boxes: np.ndarray  # (n, 4) XYXY raster pixels
    caption: str


def display_rgb(raw: np.ndarray, valid: np.ndarray, eight_bit: bool) -> np.ndarray:
    """(rows, cols, 3) uint8 for raw bands: 8-bit as they are, other types stretched 2-98 % per band over the
    valid samples (as :mod:`harnet.deploy.raster` shows them); nodata black."""
    if eight_bit:
        values = np.clip(raw, 0, 255) / 255.0
    else:
        lo, hi = percentile_stretch(raw, np.broadcast_to(valid, raw.shape))
        values = np.clip((raw - lo[:, None, None]) / (hi - lo)[:, None, None], 0.0, 1.0)
    values = np.nan_to_num(values, nan=0.0) * valid[None]
    if values.shape[0] == 1:
        values = np.repeat(values, 3, axis=0)
    return np.round(values * 255).astype(np.uint8).transpose(1, 2, 0)


def _panel_image(panel: Panel, eight_bit: bool, scale: float) -> Image.Image:
    """The panel at ``scale`` panel px per raster px."""
    rgb = display_rgb(panel.overview.astype(np.float64), panel.valid, eight_bit)
    picture = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    size = (max(1, round(panel.width * scale)), max(1, round(panel.height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST).convert("RGBA")
    layer = Image.new("RGBA", picture.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for state in ("nodata", "dropped", "train", "val"):  # val last: its outline is the one a reader looks for
        color = STATE_COLORS[state]
        for x, y, w, h, s in panel.tiles:
            if s == state:
                box = (x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1)
                draw.rectangle(box, fill=(*color, 40 if state in ("train", "val") else 90),
                               outline=(*color, 255), width=2)
    picture = Image.alpha_composite(picture, layer).convert("RGB")
    if len(panel.boxes) <= MAX_BOXES_DRAWN:  # drawn over the tiles: a translucent fill would replace them
        draw = ImageDraw.Draw(picture)
        for x0, y0, x1, y1 in (panel.boxes * scale).tolist():
            draw.rectangle((x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)), outline=BOX_COLOR)
    return picture


def draw_tile_map(panels: Sequence[Panel], path: Path, eight_bit: Sequence[bool]) -> Path:
    """Write the panels one under the other, each under its caption and the colour legend, as ``path``. All
    panels share one scale (the largest raster :data:`PANEL_SIDE` px on its long side), so sizes compare."""
    scale = PANEL_SIDE / max(max(p.width, p.height) for p in panels)
    images = [_panel_image(p, e, scale) for p, e in zip(panels, eight_bit, strict=True)]
    width = max([PANEL_SIDE // 2, *(i.width for i in images)])
    height = sum(i.height + CAPTION_HEIGHT for i in images)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    top = 0
    for panel, image in zip(panels, images, strict=True):
        draw.text((4, top + 6), panel.caption, fill=(0, 0, 0), font=font)
        top += CAPTION_HEIGHT
        sheet.paste(image, (0, top))
        top += image.height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", compress_level=1)
    return path
