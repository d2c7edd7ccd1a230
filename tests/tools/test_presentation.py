"""What a person looks at: detections drawn legibly on small images, and the training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harnet.tools.demo import plot_curves, read_metrics
from harnet.tools.predict import CLASS_COLORS, draw_detections


def test_small_images_are_upscaled_with_one_colour_per_class() -> None:
    image = torch.full((3, 64, 128), 0.5)
    boxes = torch.tensor([[8.0, 20.0, 40.0, 50.0], [70.0, 10.0, 120.0, 60.0], [50.0, 30.0, 60.0, 40.0]])
    drawn = draw_detections(image, boxes, [0, 1, 1], [0.9, 0.8, 0.4], ["circle", "square"])
    assert drawn.size == (1024, 512)  # short side 64 -> 512, aspect kept
    pixels = np.asarray(drawn)
    colours = {tuple(c) for c in pixels.reshape(-1, 3).tolist()}
    assert CLASS_COLORS[0] in colours and CLASS_COLORS[1] in colours
    # The box outline sits at the scaled coordinates: column 8 * 8 = 64 on the left edge of box 0.
    assert tuple(pixels[300, 64]) == CLASS_COLORS[0]
    # Legible labels: a tag above the box (top edge at row 160) much taller than PIL's old 8 px bitmap font.
    tag = pixels[:160, 70:200]
    rows = np.where((tag == CLASS_COLORS[0]).all(axis=2).any(axis=1))[0]
    assert rows.max() == 159 and rows.size >= 15 and rows.size == rows.max() - rows.min() + 1
    assert ((tag == (255, 255, 255)).all(axis=2)).any()  # white text on the blue tag


def test_large_images_keep_their_size_and_empty_detections_draw() -> None:
    drawn = draw_detections(torch.rand(3, 600, 700), torch.zeros(0, 4), [], [], ["a"])
    assert drawn.size == (700, 600) and drawn.mode == "RGB"
    grey = draw_detections(torch.rand(1, 32, 32), torch.tensor([[1.0, 1, 20, 20]]), [0], [0.5], ["a"], min_size=64)
    assert grey.size == (64, 64) and grey.mode == "RGB"


def test_curves_from_metrics_csv(tmp_path: Path) -> None:
    rows = ["step,name,value"]
    for step in range(10, 101, 10):
        rows += [f"{step},train/loss,{2 - step / 100}", f"{step},train/classification,{1 - step / 200}",
                 f"{step},lr,0.01"]
        if step % 50 == 0:
            rows += [f"{step},val/AP,{step / 200}", f"{step},val/AP50,{step / 150}"]
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("\n".join(rows) + "\n100,train/lo")  # a torn last row is skipped
    series = read_metrics(csv_path)
    assert series["val/AP"] == [(50, 0.25), (100, 0.5)] and len(series["train/loss"]) == 10
    out = plot_curves(csv_path, tmp_path / "fig" / "curves.png", "test")
    with Image.open(out) as im:
        assert im.size[0] > 1000 and im.size[1] > 400
