"""Datasets from a ``DataConfig``: the one place that knows which class reads which format."""

from __future__ import annotations

from pathlib import Path

from harnet.data.coco import CocoDataset
from harnet.data.csv_dataset import CsvDataset
from harnet.data.records import RecordDataset
from harnet.data.shapes import generate_shapes
from harnet.data.voc import VOCDataset
from harnet.experiment import DataConfig, ShapesConfig


def shapes_split(cfg: ShapesConfig, split: str) -> tuple[Path, Path]:
    """(image folder, annotation file) of a shapes split, generating the dataset on first use."""
    root = Path(cfg.root)
    ann = root / "annotations" / f"instances_{split}.json"
    if not ann.is_file():
        generate_shapes(root, num_images=cfg.num_images, size=cfg.size, seed=cfg.seed, difficulty=cfg.difficulty)
    return root / split, ann


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
