"""Datasets from a ``DataConfig``: the one place that knows which class reads which format."""

from __future__ import annotations

import json
from pathlib import Path

from harnet.config import to_dict
from harnet.data.coco import CocoDataset
from harnet.data.csv_dataset import CsvDataset
from harnet.data.records import RecordDataset
from harnet.data.shapes import generate_shapes
from harnet.data.voc import VOCDataset
from harnet.experiment import DataConfig, ShapesConfig


def shapes_split(cfg: ShapesConfig, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a shapes split, generating the dataset on first use.

    A stamp file records the generator settings, so a folder made with other settings is
    regenerated instead of silently reused (the generator overwrites the files it owns).
    """
    root = Path(cfg.root)
    stamp = root / "harnet-shapes.json"
    wanted = {k: v for k, v in to_dict(cfg).items() if k != "root"}
    if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
        generate_shapes(root, num_images=cfg.num_images, size=cfg.size, seed=cfg.seed, difficulty=cfg.difficulty)
        stamp.write_text(json.dumps(wanted))
    return root / split, root / "annotations" / f"instances_{split}.json"


def build_dataset(cfg: DataConfig, split: str, class_names: list[str] | None = None) -> RecordDataset:
    """The ``train`` or ``val`` dataset described by ``cfg`` (no augmentation: see AugmentedDataset)."""
    images = getattr(cfg, f"{split}_images")
    annotations = getattr(cfg, f"{split}_annotations")
    if cfg.format == "shapes":
        image_dir, ann = shapes_split(cfg.shapes, split)
        return CocoDataset(image_dir, ann)
    if cfg.format == "coco":
        return CocoDataset(images, annotations)
    if cfg.format == "voc":
        return VOCDataset(images, split=annotations or None, class_names=class_names)
    return CsvDataset(annotations, image_root=images or None, class_names=class_names)
