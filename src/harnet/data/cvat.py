"""CVAT for images 1.1 XML: ``<image>`` elements with their ``<box>`` and ``<polygon>`` shapes."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harnet.data.issues import BadDataError, IssueLog
from harnet.data.records import DetectionRecord, RecordDataset, Transform, clip_valid_boxes, keep_valid_boxes

SHAPES = ("box", "polygon")


@dataclass
class CvatShape:
    """One box or polygon: label, box in pixels (XYXY; a rotated box's or a polygon's bounding box), its
    ``occluded`` flag and ``z_order``, and how to find it in the file."""

    label: str
    box: list[float]
    occluded: bool
    z_order: int
    where: str


@dataclass
class CvatImage:
    """One ``<image>``: its name, size and shapes."""

    name: str
    width: int
    height: int
    shapes: list[CvatShape] = field(default_factory=list)
    where: str = ""


def _float(element: ET.Element, key: str, where: str) -> float:
    text = element.get(key)
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: '{key}' must be finite, got {text!r}")
    return value


def _shape_box(element: ET.Element, where: str) -> list[float]:
    """XYXY pixels of a ``<box>`` (turned by ``rotation`` degrees clockwise about its centre: its bounding
    box) or of a ``<polygon>`` (``points="x,y;x,y;..."``)."""
    if element.tag == "polygon":
        text = element.get("points") or ""
        try:
            points = [tuple(float(v) for v in pair.split(",")) for pair in text.split(";") if pair.strip()]
        except ValueError:
            raise ValueError(f"{where}: 'points' must be 'x,y;x,y;...', got {text!r}") from None
        if len(points) < 3 or any(len(p) != 2 or not all(map(math.isfinite, p)) for p in points):
            raise ValueError(f"{where}: 'points' must be at least 3 finite 'x,y' pairs, got {text!r}")
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [min(xs), min(ys), max(xs), max(ys)]
    x0, y0, x1, y1 = (_float(element, key, where) for key in ("xtl", "ytl", "xbr", "ybr"))
    rotation = _float(element, "rotation", where) if element.get("rotation") else 0.0
    if rotation % 360 == 0:
        return [x0, y0, x1, y1]
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    cos, sin = abs(math.cos(math.radians(rotation))), abs(math.sin(math.radians(rotation)))
    half_w, half_h = hw * cos + hh * sin, hw * sin + hh * cos
    return [cx - half_w, cy - half_h, cx + half_w, cy + half_h]


def meta_labels(root: ET.Element) -> list[str]:
    """The label names ``<meta>`` declares (a task's, a project's or a job's), in order; [] when none."""
    names = [(label.findtext("name") or "").strip() for label in root.iterfind("meta/*/labels/label")]
    return list(dict.fromkeys(n for n in names if n))


def parse_image(element: ET.Element, index: int) -> CvatImage:
    """One ``<image>``; any problem is a ``ValueError`` naming the element."""
    name = element.get("name") or ""
    where = f"<image> {index} (name {name!r})" if name else f"<image> {index}"
    if not name:
        raise ValueError(f"{where} has no 'name'")
    size = []
    for key in ("width", "height"):
        text = element.get(key)
        if text is None or not text.strip().isdigit() or int(text) < 1:
            raise ValueError(f"{where}: '{key}' must be a positive integer, got {text!r}")
        size.append(int(text))
    image = CvatImage(name, size[0], size[1], where=where)
    counts = dict.fromkeys(SHAPES, 0)
    for shape in element:
        if shape.tag not in SHAPES:
            continue  # tags, points, polylines, masks, ellipses, cuboids, skeletons: not boxes
        shape_where = f"{where} <{shape.tag}> {counts[shape.tag]}"
        counts[shape.tag] += 1
        label = (shape.get("label") or "").strip()
        if not label:
            raise ValueError(f"{shape_where} has no 'label'")
        shape_where += f" (label {label!r})"
        occluded, z_order = shape.get("occluded", "0"), shape.get("z_order", "0")
        if occluded not in ("0", "1") or not z_order.lstrip("-").isdigit():
            raise ValueError(f"{shape_where}: 'occluded' must be 0 or 1 and 'z_order' an integer, "
                             f"got {occluded!r} and {z_order!r}")
        image.shapes.append(CvatShape(label, _shape_box(shape, shape_where), occluded == "1", int(z_order),
                                      shape_where))
    return image


class CvatDataset(RecordDataset):
    """The images of a CVAT for images 1.1 export (``annotations.xml``) and their boxes.

    ``<box>`` (a rotated one: its bounding box) and ``<polygon>`` (its bounding box) shapes are kept; other
    shapes and tags are ignored. Each image's size is the XML's (checked against the file before training).
    Images are ``image_dir / name`` (or ``image_dir`` / the name's last part, as CVAT keeps the folders of
    uploaded files). Image ids are ``1..N`` in document order.

    Each kept box's CVAT ``occluded`` flag and ``z_order`` are in ``box_attributes[image_id]``, one dict per
    box of the record (records carry boxes and labels only, and training uses neither).

    Classes are the labels ``<meta>`` declares, in its order (labels seen, sorted, when it has none), unless
    ``class_names`` (the model's) are given. Bad data (see :mod:`harnet.data.issues`): an ``<image>`` or shape
    that is malformed, a label not declared or not in ``class_names``, or a missing image is an error naming
    the file and element, or with ``skip_bad`` skips that image. Boxes with no area inside the image are dropped
    and listed. A file that is not CVAT for images XML is always an error.
    """

    def __init__(
        self,
        xml_file: str | Path,
        image_dir: str | Path,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        source, image_dir = Path(xml_file), Path(image_dir)
        log = IssueLog(skip_bad)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: annotation file not found")
        try:
            root = ET.parse(source).getroot()
        except ET.ParseError as e:
            raise BadDataError(f"{source}: malformed XML: {e}") from None
        if root.tag != "annotations":
            raise BadDataError(f"{source}: root element is <{root.tag}>, expected <annotations> (CVAT for images 1.1)")
        if root.find("track") is not None:
            raise BadDataError(f"{source}: has <track> elements: a CVAT for video export; export the task as "
                               "'CVAT for images 1.1' instead")
        declared = meta_labels(root)

        parsed: list[tuple[int, CvatImage]] = []
        for index, element in enumerate(root.iterfind("image")):
            try:
                image = parse_image(element, index)
            except ValueError as e:
                log.bad(source, str(e))
                continue
            undeclared = next((s for s in image.shapes if declared and s.label not in declared), None)
            if undeclared is not None:
                log.bad(source, f"{undeclared.where}: label not declared in <meta> {declared}")
                continue
            parsed.append((index + 1, image))
        if class_names is None:
            class_names = declared or sorted({s.label for _, image in parsed for s in image.shapes})
        label_of = {name: label for label, name in enumerate(class_names)}

        records: list[DetectionRecord] = []
        self.box_attributes: dict[int, list[dict[str, Any]]] = {}
        for image_id, image in parsed:
            unknown = next((s for s in image.shapes if s.label not in label_of), None)
            if unknown is not None:
                log.bad(source, f"{unknown.where}: label is not in class_names {list(class_names)}")
                continue
            path = image_dir / image.name
            if not path.is_file() and (image_dir / Path(image.name).name).is_file():
                path = image_dir / Path(image.name).name
            if not path.is_file():
                log.bad(source, f"{image.where}: image file not found: {path}", error=FileNotFoundError)
                continue
            raw = torch.tensor([s.box for s in image.shapes], dtype=torch.float64).reshape(-1, 4)
            labels = torch.tensor([label_of[s.label] for s in image.shapes], dtype=torch.int64)
            _, keep = clip_valid_boxes(raw, image.width, image.height)
            self.box_attributes[image_id] = [{"occluded": s.occluded, "z_order": s.z_order}
                                             for s, k in zip(image.shapes, keep.tolist(), strict=True) if k]
            sources = [(str(source), f"{s.where} {[round(v, 3) for v in s.box]}") for s in image.shapes]
            boxes, labels = keep_valid_boxes(raw, labels, image.width, image.height, log, sources)
            records.append(DetectionRecord(path=path, width=image.width, height=image.height, image_id=image_id,
                                           boxes=boxes, labels=labels))
        super().__init__(records, class_names=list(class_names), transforms=transforms, issues=log)

    def drop_images(self, image_ids: set[int]) -> None:
        super().drop_images(image_ids)
        for image_id in image_ids:
            self.box_attributes.pop(image_id, None)
