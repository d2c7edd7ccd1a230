"""A dataset written in the files labelling tools read: any format harnet reads -> COCO, Label Studio, CVAT or
YOLO, through the same writers that write ``harnet predict --format`` pre-annotations
(:mod:`harnet.deploy.annotation_formats`), so that a dataset moves to the tool its labellers use and back."""

from __future__ import annotations

import os
from pathlib import Path

from harnet.data.records import RecordDataset
from harnet.deploy.annotation_formats import AnnotatedImage, image_names, write_annotations


def annotated_images(dataset: RecordDataset, image_root: str | Path | None = None) -> list[AnnotatedImage]:
    """The dataset's images and training boxes, named relative to ``image_root`` (default: the folder that
    holds every image, :func:`~harnet.deploy.annotation_formats.image_names`).

    Only the training targets are written: ignored regions (VOC ``difficult``, COCO ``iscrowd``) have no place
    in these formats. Extra per-box attributes a dataset keeps (CVAT's ``occluded``, ``z_order``) go along."""
    paths = [record.path for record in dataset.records]
    if image_root is None:
        names = image_names(paths)
    else:
        root = os.path.abspath(image_root)
        names = [Path(os.path.relpath(os.path.abspath(p), root)).as_posix() for p in paths]
    extras = getattr(dataset, "box_attributes", {})
    return [AnnotatedImage(name, record.width, record.height, record.boxes.double().numpy(),
                           record.labels.numpy(), path=record.path, attributes=extras.get(record.image_id))
            for record, name in zip(dataset.records, names, strict=True)]


def write_dataset(dataset: RecordDataset, fmt: str, out: str | Path, image_root: str | Path | None = None) -> Path:
    """Write ``dataset`` in ``fmt`` (coco, labelstudio, cvat: a file; yolo: a folder with ``data.yaml``, the
    images linked under ``images/``) to ``out``; returns the file that names it (YOLO: the ``data.yaml``).
    COCO keeps the dataset's category ids."""
    return write_annotations(fmt, annotated_images(dataset, image_root), dataset.class_names, out,
                             dataset.category_ids)
