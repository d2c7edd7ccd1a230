"""Synthetic shapes: determinism, exact in-image boxes, class coverage, and easy vs. hard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.data import SHAPE_CLASSES, CocoDataset, generate_shapes
from harnet.data.shapes import _DISTRACTORS, _SUPERSAMPLE, _box, _make_geometry, _rasterize


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_shapes(
            tmp_path / name, num_images=5, size=48, seed=seed, difficulty="hard", val_fraction=0.4
        )
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert sorted(a) == [
        "annotations/instances_train.json",
        "annotations/instances_val.json",
        "train/000001.png",
        "train/000002.png",
        "train/000003.png",
        "val/000004.png",
        "val/000005.png",
    ]


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_boxes_inside_image_and_all_classes_present(tmp_path: Path, difficulty: str) -> None:
    info = generate_shapes(tmp_path, num_images=30, size=64, seed=0, difficulty=difficulty)
    assert info["num_train"] == 24 and info["num_val"] == 6 and info["class_names"] == list(SHAPE_CLASSES)
    anns = []
    for split in ("train", "val"):
        data = json.loads(info[f"{split}_ann"].read_text())
        assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
        anns += data["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(SHAPE_CLASSES) + 1))
    for ann in anns:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    ds = CocoDataset(info["val_images"], info["val_ann"])
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and ds.num_invalid_boxes == 0 and target["image_id"] == 25


def test_hard_is_harder_than_easy(tmp_path: Path) -> None:
    stats = {}
    for difficulty in ("easy", "hard"):
        info = generate_shapes(tmp_path / difficulty, num_images=20, size=64, seed=1, difficulty=difficulty)
        data = json.loads(info["train_ann"].read_text())
        areas = np.array([a["bbox"][2] * a["bbox"][3] for a in data["annotations"]])
        pixels = np.stack(
            [np.asarray(CocoDataset(info["train_images"], info["train_ann"])[i][0]) for i in range(5)]
        )
        # Background texture shows up as spatial variation between neighbouring pixels.
        texture = float(np.abs(np.diff(pixels, axis=-1)).mean())
        stats[difficulty] = (len(areas) / info["num_train"], float(np.median(areas)), texture)
    easy, hard = stats["easy"], stats["hard"]
    assert hard[0] > easy[0]  # more objects per image
    assert hard[1] < easy[1]  # smaller objects
    assert hard[2] > easy[2]  # busier images


@pytest.mark.parametrize("kind", [*SHAPE_CLASSES, *_DISTRACTORS])
def test_box_is_tight_around_the_drawn_pixels(kind: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        cx, cy, r = rng.uniform(20, 44), rng.uniform(20, 44), rng.uniform(3, 19)
        parts = _make_geometry(kind, cx, cy, r, rng)
        y0, x0, alpha = _rasterize(parts, 64)
        rows, cols = np.nonzero(alpha > 0)
        drawn = np.array([x0 + cols.min(), y0 + rows.min(), x0 + cols.max() + 1, y0 + rows.max() + 1])
        box = _box(parts)
        # Pixel box of the coverage = geometric box rounded outwards, allowing for PIL's inclusive edge
        # fill (at most one supersampled sub-pixel).
        slack = 1.0 / _SUPERSAMPLE + 1e-6
        assert np.all(drawn[:2] <= box[:2]) and np.all(drawn[:2] >= np.floor(box[:2] - slack))
        assert np.all(drawn[2:] >= box[2:]) and np.all(drawn[2:] <= np.ceil(box[2:] + slack))
