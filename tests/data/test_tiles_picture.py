"""tiles.png: the overview stretched as the deploy runtime shows rasters, tiles outlined in their split's colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harnet.data.tiles_picture import BOX_COLOR, STATE_COLORS, Panel, display_rgb, draw_tile_map


def test_display_keeps_8_bit_stretches_the_rest_and_blacks_out_nodata() -> None:
    valid = np.ones((4, 4), dtype=bool)
    valid[0, 0] = False
    eight = np.full((3, 4, 4), 128.0)
    assert (display_rgb(eight, valid, True)[1:, 1:] == 128).all() and (display_rgb(eight, valid, True)[0, 0] == 0).all()
    wide = np.arange(16, dtype=np.float64).reshape(1, 4, 4) * 1000  # one 16-bit band, shown grey
    shown = display_rgb(wide, valid, False)
    assert shown.shape == (4, 4, 3) and shown.dtype == np.uint8
    assert shown[0, 0].tolist() == [0, 0, 0] and shown[3, 3].tolist() == [255, 255, 255]
    assert (shown[..., 0] == shown[..., 2]).all()


def test_tiles_and_boxes_are_drawn_in_their_colours(tmp_path: Path) -> None:
    overview = np.zeros((3, 50, 100))
    tiles = [(0, 0, 50, 50, "train"), (50, 0, 50, 50, "val")]
    panel = Panel("r.tif", overview, np.ones((50, 100), dtype=bool), 200, 100, tiles,
                  np.array([[20.0, 20, 60, 60]]), "r.tif: caption")
    path = draw_tile_map([panel], tmp_path / "tiles.png", [True])
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape[1] == 1024  # the largest raster 1024 px on its long side
    body = picture[28:]  # under the caption
    assert (body[1, 1] == STATE_COLORS["train"]).all() and (body[1, 300] == STATE_COLORS["val"]).all()
    assert (body[102, 200] == BOX_COLOR).all()  # the box's top edge at y = 20 px * 5.12
