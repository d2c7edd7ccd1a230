"""Datasets from a DataConfig: shapes are generated once per settings, never silently reused."""

from __future__ import annotations

import json
from pathlib import Path

from harnet.config.experiment import DataConfig, ShapesConfig
from harnet.data.build import build_dataset, shapes_split


def test_shapes_generated_once_and_regenerated_on_new_settings(tmp_path: Path) -> None:
    cfg = ShapesConfig(root=str(tmp_path), num_images=10, size=64)
    images, ann = shapes_split(cfg, "train")
    first = ann.stat().st_mtime_ns
    shapes_split(cfg, "val")
    assert ann.stat().st_mtime_ns == first, "same settings: reused"
    cfg.num_images = 15
    _, ann = shapes_split(cfg, "train")
    assert len(json.loads(ann.read_text())["images"]) == 12
    assert images == tmp_path / "train"


def test_build_dataset_for_shapes(tmp_path: Path) -> None:
    data = DataConfig(shapes=ShapesConfig(root=str(tmp_path), num_images=10, size=64))
    train, val = build_dataset(data, "train"), build_dataset(data, "val")
    assert len(train) == 8 and len(val) == 2 and train.class_names == val.class_names
