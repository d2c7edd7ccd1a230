"""Pascal VOC XML detection dataset, in the VOC directory layout or as a flat folder."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harnet.data.image_io import BadImageError, image_size
from harnet.data.issues import IssueLog
from harnet.data.records import DetectionRecord, RecordDataset, Transform, finite_box, keep_valid_boxes
from harnet.utils.errors import one_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class VocObject:
    """One ``<object>``: class name, raw ``(xmin, ymin, xmax, ymax)`` as written, difficult flag."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VocAnnotation:
    """One parsed XML file. ``width``/``height`` are ``None`` when absent or not positive (common in the wild)."""

    filename: str | None
    width: int | None
    height: int | None
    objects: list[VocObject]


def parse_voc_xml(data: bytes | str, source: str | Path) -> VocAnnotation:
    """Parse VOC XML text; every problem is a ``ValueError`` naming ``source`` (the file)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{source}: malformed XML: {exc}") from None
    if root.tag != "annotation":
        raise ValueError(f"{source}: root element is <{root.tag}>, expected <annotation>")

    def number(element: ET.Element, tag: str, where: str) -> float:
        text = element.findtext(tag)
        try:
            return float(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {where}: <{tag}> must be a number, got {text!r}") from None

    size = root.find("size")
    width = height = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        # Zero, negative or NaN sizes are common placeholders in the wild: read the image instead.
        w, h = number(size, "width", "<size>"), number(size, "height", "<size>")
        if math.isfinite(w) and math.isfinite(h) and w >= 1 and h >= 1:
            width, height = int(w), int(h)

    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{source}: {where} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{source}: {where} ({name}) has no <bndbox>")
        box = tuple(number(bndbox, tag, f"{where} ({name})") for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult_text = (obj.findtext("difficult") or "0").strip()
        try:
            difficult = bool(int(float(difficult_text)))
        except ValueError:
            raise ValueError(f"{source}: {where} ({name}): bad <difficult> {difficult_text!r}") from None
        objects.append(VocObject(name=name, box=box, difficult=difficult))  # type: ignore[arg-type]
    filename = (root.findtext("filename") or "").strip() or None
    return VocAnnotation(filename=filename, width=width, height=height, objects=objects)


def _resolve_image(image_dir: Path, xml_path: Path, filename: str | None) -> Path:
    """The image an XML describes: its ``<filename>``, else the XML's stem with an image extension."""
    if filename is not None and (image_dir / filename).is_file():
        return image_dir / filename
    for extension in IMAGE_EXTENSIONS:
        for candidate in (xml_path.stem + extension, xml_path.stem + extension.upper()):
            if (image_dir / candidate).is_file():
                return image_dir / candidate
    # Nothing on disk: keep the declared name so the FileNotFoundError at load time names it.
    return image_dir / (filename or xml_path.stem + ".jpg")


class VOCDataset(RecordDataset):
    """Pascal VOC annotations.

    Layouts: ``root/Annotations/*.xml`` + ``root/JPEGImages/*`` (the VOC devkit), or a flat folder with
    XML files next to their images (what labelling tools export). ``split`` reads the ids from
    ``root/ImageSets/Main/{split}.txt``; without it every XML is used. Image ids are ``1..N`` in sorted
    XML file name order, so they are stable across runs. ``class_names`` defaults to the sorted set of
    names in the XMLs; a name outside a given list is an error rather than silently dropped.

    ``difficult`` objects are not training targets; they enter ``coco`` as ``iscrowd=1`` so that COCOeval
    neither rewards nor penalises detections on them, as the VOC protocol does.

    ``one_based=True`` follows the VOC devkit, whose coordinates are 1-based pixel indices (``xmin - 1``,
    ``ymin - 1`` gives continuous 0-based corners); pass ``False`` for tools that write 0-based corners.

    Bad data (see :mod:`harnet.data.issues`): an XML file that is missing, malformed, names an unknown
    class, has a non-finite coordinate, or whose size must be read from a missing/unreadable image is an
    error naming the XML, or with ``skip_bad`` skips that image (ids of the others do not change). Boxes
    with no area inside the image are dropped and listed.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        *,
        one_based: bool = True,
        skip_bad: bool = False,
    ) -> None:
        root = Path(root)
        log = IssueLog(skip_bad)
        if (root / "Annotations").is_dir():
            ann_dir, image_dir = root / "Annotations", root / "JPEGImages"
        elif root.is_dir():
            ann_dir = image_dir = root
        else:
            raise FileNotFoundError(f"VOC root not found: {root}")

        if split is not None:
            split_file = root / "ImageSets" / "Main" / f"{split}.txt"
            if not split_file.is_file():
                raise FileNotFoundError(f"VOC split file not found: {split_file}")
            ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
            xml_paths = sorted(ann_dir / f"{image_id}.xml" for image_id in ids)
        else:
            xml_paths = sorted(ann_dir.glob("*.xml"))

        # Image ids count every listed XML, so skipping one leaves the others' ids unchanged.
        parsed: list[tuple[int, Path, VocAnnotation]] = []
        for image_id, path in enumerate(xml_paths, start=1):
            if not path.is_file():
                log.bad(split_file if split is not None else path, f"annotation file not found: {path}",
                        error=FileNotFoundError)
                continue
            try:
                ann = parse_voc_xml(path.read_bytes(), path)
            except ValueError as e:
                log.reject(e, path)
                continue
            bad = next((o for o in ann.objects if not finite_box(o.box)), None)
            if bad is not None:
                log.bad(path, f"object {bad.name!r} has a non-finite box {list(bad.box)}")
                continue
            parsed.append((image_id, path, ann))
        if class_names is None:
            class_names = sorted({obj.name for _, _, ann in parsed for obj in ann.objects})
        label_of = {name: label for label, name in enumerate(class_names)}
        offset = 1.0 if one_based else 0.0

        records: list[DetectionRecord] = []
        for image_id, xml_path, ann in parsed:
            unknown = next((o.name for o in ann.objects if o.name not in label_of), None)
            if unknown is not None:
                log.bad(xml_path, f"class {unknown!r} is not in class_names {list(class_names)}")
                continue
            image_path = _resolve_image(image_dir, xml_path, ann.filename)
            if ann.width is None or ann.height is None:
                try:
                    width, height = image_size(image_path)
                except (FileNotFoundError, BadImageError) as e:
                    log.bad(xml_path, f"no <size>, and the image cannot be read: {one_line(e)}",
                            error=type(e))
                    continue
            else:
                width, height = ann.width, ann.height
            kept = {}
            for difficult in (False, True):
                objs = [o for o in ann.objects if o.difficult == difficult]
                raw = torch.tensor([o.box for o in objs], dtype=torch.float64).reshape(-1, 4)
                raw[:, :2] -= offset
                labels = torch.tensor([label_of[o.name] for o in objs], dtype=torch.int64)
                sources = [(str(xml_path), f"object {o.name!r} {list(o.box)}") for o in objs]
                kept[difficult] = keep_valid_boxes(raw, labels, width, height, log, sources)
            records.append(
                DetectionRecord(
                    path=image_path,
                    width=width,
                    height=height,
                    image_id=image_id,
                    boxes=kept[False][0],
                    labels=kept[False][1],
                    ignored_boxes=kept[True][0],
                    ignored_labels=kept[True][1],
                )
            )
        super().__init__(records, class_names=list(class_names), transforms=transforms, issues=log)
