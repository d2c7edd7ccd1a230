"""Boxes in the files labelling tools import: COCO, Label Studio, CVAT for images 1.1 and Ultralytics YOLO.

One writer per format serves both directions of a labelling round: ``harnet predict --format`` writes the
model's detections with their scores as pre-annotations (the next round starts from the model's guesses
instead of from nothing), and :func:`harnet.data.convert.write_dataset` writes a dataset's ground truth (no
scores) in the same layout. harnet reads every one of these files back as a dataset (``data.format`` coco,
labelstudio, cvat, yolo), so the writer and the reader of a format check each other: a round trip keeps
every box to a small fraction of a pixel.

Where the score goes, per format: COCO, a ``score`` on each annotation of a full dataset file (``images``,
``annotations``, ``categories``: what CVAT and pycocotools import, and what ``harnet eval`` reads); Label
Studio, ``predictions`` (not ``annotations``) with a ``score`` per result, shown in its review view; CVAT,
which has no score, a ``score`` attribute on each box, kept when the task's label declares a number
attribute of that name and skipped by CVAT otherwise; YOLO, a sixth column as Ultralytics writes it with
``save_conf``. Only the standard library, numpy and the atomic writer are used, so a device without torch
writes these files too.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from harnet.utils.atomic import write_text_atomic

ANNOTATION_FORMATS = ("coco", "labelstudio", "cvat", "yolo")
# What ``harnet predict --format F`` writes into its output folder (YOLO: a folder, see write_yolo). Prediction
# replaces these as a set on every call, so the names are ones no user file or dataset folder has by chance.
PREDICTION_FILES = {"coco": "preannotations_coco.json", "labelstudio": "preannotations_labelstudio.json",
                    "cvat": "preannotations_cvat.xml", "yolo": "preannotations_yolo"}

# Label Studio's default object detection template: <RectangleLabels name="label" toName="image"> on
# <Image name="image" value="$image">. Results must name the template's tags to show up.
LABEL_STUDIO_FROM = "label"
LABEL_STUDIO_TO = "image"
# Decimals of pixel coordinates in COCO and CVAT files: far below a pixel, and readable.
PIXEL_DECIMALS = 3
# Significant digits of YOLO's normalised coordinates: exact to well under 0.01 px on any image a tool opens.
YOLO_DIGITS = 8


@dataclass
class AnnotatedImage:
    """One image's boxes, as every writer takes them.

    ``name`` is how the file refers to the image: its path relative to the image folder, ``/``-separated
    (:func:`image_names`). ``boxes`` are XYXY pixels, ``labels`` indices into the class names. ``scores``
    makes the boxes predictions (None: ground truth). ``path`` is the image file itself (YOLO links it beside
    its labels). ``attributes`` are per-box extras a format keeps (CVAT: ``occluded``, ``z_order``).
    """

    name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    path: Path | None = None
    attributes: Sequence[Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.labels) != len(self.boxes) or (self.scores is not None and len(self.scores) != len(self.boxes)):
            raise ValueError(f"{self.name}: {len(self.boxes)} boxes but {len(self.labels)} labels"
                             + ("" if self.scores is None else f" and {len(self.scores)} scores"))

    def attribute(self, index: int, key: str, default: Any) -> Any:
        if self.attributes is None:
            return default
        return self.attributes[index].get(key, default)


def image_names(paths: Sequence[str | Path]) -> list[str]:
    """How files refer to ``paths``: relative to the folder that holds them all (one folder: the file
    names), so that two inputs named alike in different folders stay apart and a tool matches the names to
    the images it was given. Paths on different drives keep their file names only."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if not absolute:
        return []
    try:
        root = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError:  # Windows: different drives have no common folder
        return [p.name for p in absolute]
    return [p.relative_to(root).as_posix() for p in absolute]


def _xyxy(image: AnnotatedImage, i: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in image.boxes[i])
    return x0, y0, x1, y1


def _pixels(value: float) -> float:
    return round(value, PIXEL_DECIMALS)


def _has_scores(images: Sequence[AnnotatedImage]) -> bool:
    """Predictions or ground truth: one file is all of one kind."""
    kinds = {image.scores is not None for image in images}
    if len(kinds) > 1:
        raise ValueError("some images have scores and others not: write predictions and ground truth apart")
    return kinds == {True}


def coco_dict(images: Sequence[AnnotatedImage], class_names: Sequence[str],
              category_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """A COCO instances dataset (image ids 1..N in order; ``score`` on each annotation of predictions)."""
    if category_ids is None:
        category_ids = range(1, len(class_names) + 1)
    ids = [int(c) for c in category_ids]
    scored = _has_scores(images)
    annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        for i in range(len(image.boxes)):
            x0, y0, x1, y1 = (_pixels(v) for v in _xyxy(image, i))
            w, h = _pixels(x1 - x0), _pixels(y1 - y0)
            ann: dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id,
                                   "category_id": ids[int(image.labels[i])], "bbox": [x0, y0, w, h],
                                   "area": _pixels(w * h), "iscrowd": 0}
            if scored:
                ann["score"] = float(image.scores[i])  # type: ignore[index]
            annotations.append(ann)
    return {
        "images": [{"id": k, "file_name": im.name, "width": im.width, "height": im.height}
                   for k, im in enumerate(images, start=1)],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(n), "supercategory": ""} for c, n in zip(ids, class_names, strict=True)],
    }


def write_coco(images: Sequence[AnnotatedImage], class_names: Sequence[str], path: str | Path,
               category_ids: Sequence[int] | None = None) -> Path:
    """Write :func:`coco_dict` as JSON to ``path``, atomically."""
    path = Path(path)
    write_text_atomic(json.dumps(coco_dict(images, class_names, category_ids), indent=1) + "\n", path)
    return path


def labelstudio_tasks(images: Sequence[AnnotatedImage], class_names: Sequence[str], *, image_prefix: str = "",
                      model_version: str = "harnet") -> list[dict[str, Any]]:
    """Label Studio tasks: ``data.image`` is ``image_prefix`` + the image's name; boxes are
    ``rectanglelabels`` results in percent of the image, under ``predictions`` (with scores: Label Studio's
    pre-annotations, and the task's score is their mean) or ``annotations`` (ground truth)."""
    scored = _has_scores(images)
    tasks = []
    for image in images:
        results = []
        for i in range(len(image.boxes)):
            x0, y0, x1, y1 = _xyxy(image, i)
            result: dict[str, Any] = {
                "id": f"r{i}", "type": "rectanglelabels", "from_name": LABEL_STUDIO_FROM,
                "to_name": LABEL_STUDIO_TO, "original_width": image.width, "original_height": image.height,
                "image_rotation": 0,
                "value": {"x": 100.0 * x0 / image.width, "y": 100.0 * y0 / image.height,
                          "width": 100.0 * (x1 - x0) / image.width, "height": 100.0 * (y1 - y0) / image.height,
                          "rotation": 0, "rectanglelabels": [str(class_names[int(image.labels[i])])]},
            }
            if scored:
                result["score"] = float(image.scores[i])  # type: ignore[index]
            results.append(result)
        task: dict[str, Any] = {"data": {"image": image_prefix + image.name}}
        if scored:
            mean = float(np.mean(image.scores)) if len(results) else 0.0  # type: ignore[arg-type]
            task["predictions"] = [{"model_version": model_version, "score": mean, "result": results}]
        else:
            task["annotations"] = [{"result": results}]
        tasks.append(task)
    return tasks


def write_labelstudio(images: Sequence[AnnotatedImage], class_names: Sequence[str], path: str | Path, *,
                      image_prefix: str = "", model_version: str = "harnet") -> Path:
    """Write :func:`labelstudio_tasks` as a Label Studio JSON import file, atomically."""
    path = Path(path)
    tasks = labelstudio_tasks(images, class_names, image_prefix=image_prefix, model_version=model_version)
    write_text_atomic(json.dumps(tasks, indent=1) + "\n", path)
    return path


def cvat_xml(images: Sequence[AnnotatedImage], class_names: Sequence[str]) -> str:
    """CVAT for images 1.1: ``<meta>`` lists the labels, each ``<image>`` (ids 0..N-1 in order) its ``<box>``
    elements, predictions with ``source="auto"`` and a ``score`` attribute."""
    scored = _has_scores(images)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "size").text = str(len(images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = str(name)
        ET.SubElement(label, "type").text = "rectangle"
        attributes = ET.SubElement(label, "attributes")
        if scored:
            spec = ET.SubElement(attributes, "attribute")
            for key, value in (("name", "score"), ("mutable", "False"), ("input_type", "number"),
                               ("default_value", "0"), ("values", "0\n1\n0.0001")):
                ET.SubElement(spec, key).text = value
    for k, image in enumerate(images):
        element = ET.SubElement(root, "image", id=str(k), name=image.name, width=str(image.width),
                                height=str(image.height))
        for i in range(len(image.boxes)):
            x0, y0, x1, y1 = _xyxy(image, i)
            box = ET.SubElement(element, "box", label=str(class_names[int(image.labels[i])]),
                                source="auto" if scored else "manual",
                                occluded=str(int(bool(image.attribute(i, "occluded", False)))),
                                xtl=f"{x0:.{PIXEL_DECIMALS}f}", ytl=f"{y0:.{PIXEL_DECIMALS}f}",
                                xbr=f"{x1:.{PIXEL_DECIMALS}f}", ybr=f"{y1:.{PIXEL_DECIMALS}f}",
                                z_order=str(int(image.attribute(i, "z_order", 0))))
            if scored:
                ET.SubElement(box, "attribute", name="score").text = f"{float(image.scores[i]):.4f}"  # type: ignore[index]
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_cvat(images: Sequence[AnnotatedImage], class_names: Sequence[str], path: str | Path) -> Path:
    """Write :func:`cvat_xml` to ``path``, atomically."""
    path = Path(path)
    write_text_atomic(cvat_xml(images, class_names), path)
    return path


def yolo_lines(image: AnnotatedImage) -> str:
    """``class cx cy w h`` per box, normalised to the image (and ``conf`` last for predictions)."""
    lines = []
    for i in range(len(image.boxes)):
        x0, y0, x1, y1 = _xyxy(image, i)
        values = [(x0 + x1) / 2 / image.width, (y0 + y1) / 2 / image.height,
                  (x1 - x0) / image.width, (y1 - y0) / image.height]
        if image.scores is not None:
            values.append(float(image.scores[i]))
        lines.append(" ".join([str(int(image.labels[i])), *(f"{v:.{YOLO_DIGITS}g}" for v in values)]) + "\n")
    return "".join(lines)


def yolo_label_name(name: str) -> str:
    """The label file of an image named ``name``, relative to ``labels/``: the same path with ``.txt``."""
    return PurePosixPath(name).with_suffix(".txt").as_posix()


def yolo_yaml(class_names: Sequence[str]) -> str:
    """A ``data.yaml`` whose ``train`` and ``val`` are the ``images`` folder beside it (no ``path``: the
    file's own folder is the root, for Ultralytics and harnet alike). Names are JSON strings, which YAML
    reads as they are, so no YAML library is needed to write them."""
    lines = ["# written by harnet: the images are in images/, their boxes in labels/\n",
             "train: images\n", "val: images\n", f"nc: {len(class_names)}\n", "names:\n"]
    lines += [f"  {i}: {json.dumps(str(name))}\n" for i, name in enumerate(class_names)]
    return "".join(lines)


def _link_image(source: Path, target: Path) -> None:
    """``target`` becomes a symbolic link to ``source`` (a copy where links cannot be made), replacing it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        target.symlink_to(Path(os.path.abspath(source)))
    except OSError:  # Windows without the right to make links
        shutil.copy2(source, target)


def write_yolo(images: Sequence[AnnotatedImage], class_names: Sequence[str], folder: str | Path, *,
               link_images: bool = True) -> Path:
    """The Ultralytics layout in ``folder``: ``labels/<name>.txt`` per image (empty for an image without
    boxes: seen, nothing in it), ``images/<name>`` linking to the image file (``link_images``), ``data.yaml``
    and ``classes.txt`` (one name a line, what Label Studio's and CVAT's YOLO importers read). Returns the
    ``data.yaml``. Two images whose names differ only by their suffix would share a label file: a
    ``ValueError``, before anything is written."""
    folder = Path(folder)
    label_names = [yolo_label_name(image.name) for image in images]
    seen: dict[str, str] = {}
    for image, label in zip(images, label_names, strict=True):
        if label in seen:
            raise ValueError(f"{seen[label]} and {image.name} would share the YOLO label file labels/{label}")
        seen[label] = image.name
    for image, label in zip(images, label_names, strict=True):
        write_text_atomic(yolo_lines(image), folder / "labels" / label)
        if link_images and image.path is not None:
            _link_image(image.path, folder / "images" / image.name)
    write_text_atomic("".join(f"{name}\n" for name in class_names), folder / "classes.txt")
    write_text_atomic(yolo_yaml(class_names), folder / "data.yaml")
    return folder / "data.yaml"


def write_annotations(fmt: str, images: Sequence[AnnotatedImage], class_names: Sequence[str], out: str | Path,
                      category_ids: Sequence[int] | None = None) -> Path:
    """Write ``images`` in format ``fmt`` to ``out`` (a file; YOLO: a folder); returns what to import."""
    if fmt == "coco":
        return write_coco(images, class_names, out, category_ids)
    if fmt == "labelstudio":
        return write_labelstudio(images, class_names, out)
    if fmt == "cvat":
        return write_cvat(images, class_names, out)
    if fmt == "yolo":
        return write_yolo(images, class_names, out)
    raise ValueError(f"unknown annotation format {fmt!r}; choose from {', '.join(ANNOTATION_FORMATS)}")
