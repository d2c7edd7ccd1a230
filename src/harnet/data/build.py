"""Datasets from a ``DataConfig``: the one place that knows which class reads which format."""

from __future__ import annotations

import json
from pathlib import Path

from harnet.config.experiment import DataConfig, ShapesConfig
from harnet.config.io import ConfigError
from harnet.config.model import InputConfig, to_dict
from harnet.data.coco import CocoDataset
from harnet.data.csv_dataset import CsvDataset
from harnet.data.cvat import CvatDataset
from harnet.data.labelstudio import LabelStudioDataset
from harnet.data.records import RecordDataset
from harnet.data.shapes import generate_shapes
from harnet.data.voc import VOCDataset
from harnet.data.yolo import YoloDataset


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


def annotation_source(cfg: DataConfig, split: str) -> str:
    """The file (or folder) a split's annotations come from, for messages."""
    if cfg.format == "shapes":
        return str(shapes_split(cfg.shapes, split)[1])
    return getattr(cfg, f"{split}_annotations") or getattr(cfg, f"{split}_images")


def build_dataset(cfg: DataConfig, split: str, class_names: list[str] | None = None,
                  classes_from: str = "the training set", model_input: InputConfig | None = None) -> RecordDataset:
    """The ``train`` or ``val`` dataset described by ``cfg`` (no augmentation: see AugmentedDataset).

    ``class_names`` are the model's classes (label ``i`` is ``class_names[i]``), read from ``classes_from``
    (named in errors): a COCO file's categories are matched to them by name, the other formats' names map to
    them.

    Paths the config names must exist (else a ``ConfigError`` naming the key: a usage error). Every
    image is then checked before anything trains (:meth:`RecordDataset.check_images`): its header by
    default, its pixels too with ``cfg.skip_bad``, which also turns bad items into skipped-and-listed
    ones (``dataset.issues``) instead of errors.

    ``model_input``: the input of the model the dataset is for (evaluation, the val set of a training): its
    bands are read and every image must have its band count and data type; else ``cfg.bands`` are read and the
    first image sets them (``dataset.input``).
    """
    images = getattr(cfg, f"{split}_images")
    annotations = getattr(cfg, f"{split}_annotations")
    skip = cfg.skip_bad
    if cfg.format == "shapes":
        image_dir, ann = shapes_split(cfg.shapes, split)
        dataset: RecordDataset = CocoDataset(image_dir, ann, skip_bad=skip, class_names=class_names,
                                             classes_from=classes_from)
    elif cfg.format == "coco":
        _require(cfg, split, "images", folder=True)
        _require(cfg, split, "annotations", folder=False)
        dataset = CocoDataset(images, annotations, skip_bad=skip, class_names=class_names, classes_from=classes_from)
    elif cfg.format == "voc":
        _require(cfg, split, "images", folder=True)
        dataset = VOCDataset(images, split=annotations or None, class_names=class_names, skip_bad=skip)
    elif cfg.format == "csv":
        _require(cfg, split, "annotations", folder=False)
        if images:
            _require(cfg, split, "images", folder=True)
        dataset = CsvDataset(annotations, image_root=images or None, class_names=class_names, skip_bad=skip)
    elif cfg.format == "yolo":
        _require(cfg, split, "annotations", folder=False)
        dataset = YoloDataset(annotations, split=split, class_names=class_names, skip_bad=skip)
    else:
        _require(cfg, split, "images", folder=True)
        _require(cfg, split, "annotations", folder=False)
        reader = LabelStudioDataset if cfg.format == "labelstudio" else CvatDataset
        dataset = reader(annotations, images, class_names=class_names, skip_bad=skip)
    dataset.bands = _bands(cfg, model_input)
    dataset.check_images(decode=skip, expect=model_input)
    return dataset


def _bands(cfg: DataConfig, model_input: InputConfig | None) -> tuple[int, ...] | None:
    """The bands to read: the model's (which ``data.bands`` may repeat, not contradict), else ``data.bands``."""
    if model_input is None:
        return cfg.bands
    if cfg.bands is not None and tuple(cfg.bands) != model_input.bands:
        raise ConfigError(f"data.bands {list(cfg.bands)}: the model reads "
                          f"{'bands ' + str(list(model_input.bands)) if model_input.bands else 'every band'}")
    return model_input.bands


def _require(cfg: DataConfig, split: str, kind: str, folder: bool) -> None:
    """A path the config must name and that must exist: one line naming the config key otherwise."""
    key = f"{split}_{kind}"
    value = getattr(cfg, key)
    what = "folder" if folder else "file"
    if not value:
        raise ConfigError(f"data.{key} is not set (format {cfg.format} needs a {what} there)")
    path = Path(value)
    if not (path.is_dir() if folder else path.is_file()):
        raise ConfigError(f"data.{key}: {what} not found: {path}")
