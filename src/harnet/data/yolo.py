"""Ultralytics YOLO detection dataset: a ``data.yaml``, images under ``images/``, one ``.txt`` per image under
``labels/``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from harnet.data.image_io import BadImageError, image_size
from harnet.data.issues import BadDataError, IssueLog
from harnet.data.records import DetectionRecord, RecordDataset, Transform, keep_valid_boxes
from harnet.deploy.files import IMAGE_SUFFIXES
from harnet.utils.errors import one_line

# One label line: class, then 4 box values or 2 per polygon vertex (at least 3), then an optional confidence.
_BOX_VALUES = 4
_MIN_POLYGON_VALUES = 6


def load_data_yaml(path: Path) -> dict[str, Any]:
    """The ``data.yaml`` mapping; a file that is not one is a ``BadDataError`` naming it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise BadDataError(f"{path}: malformed YAML ({one_line(e)})") from None
    except UnicodeDecodeError:
        raise BadDataError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise BadDataError(f"{path}: expected a mapping with 'names' and 'train'/'val', got {type(data).__name__}")
    return data


def yolo_names(data: dict[str, Any], source: Path) -> dict[int, str]:
    """``names`` as ``{class id: name}``: a list (ids 0..n-1) or a mapping ``{id: name}``, checked against ``nc``."""
    names = data.get("names")
    if isinstance(names, list):
        pairs: list[tuple[Any, Any]] = list(enumerate(names))
    elif isinstance(names, dict):
        pairs = list(names.items())
    else:
        raise BadDataError(f"{source}: 'names' must be a list or a mapping of class id to name, got {names!r}")
    out: dict[int, str] = {}
    for key, name in pairs:
        if isinstance(key, str) and key.isdigit():
            key = int(key)
        if not isinstance(key, int) or isinstance(key, bool) or key < 0 or name is None or str(name) == "":
            raise BadDataError(f"{source}: 'names' entry {key!r}: {name!r} is not a class id >= 0 with a name")
        out[key] = str(name)
    if len(set(out.values())) != len(out):
        raise BadDataError(f"{source}: a class name appears twice in 'names' {list(out.values())}")
    nc = data.get("nc")
    if nc is not None and nc != len(out):
        raise BadDataError(f"{source}: 'nc' is {nc} but 'names' has {len(out)} classes")
    return dict(sorted(out.items()))


def dataset_root(data: dict[str, Any], source: Path) -> Path:
    """The folder ``train``/``val`` are relative to: ``path`` (relative: to the yaml's folder, else to the
    working folder, where Ultralytics looks first), or the yaml's folder when there is no ``path``."""
    path = data.get("path")
    if path is None or path == "":
        return source.parent
    root = Path(str(path)).expanduser()
    if root.is_absolute():
        return root
    for candidate in (source.parent / root, root):
        if candidate.is_dir():
            return candidate
    raise BadDataError(f"{source}: path {path!r}: folder not found (in {source.parent} nor in {Path.cwd()})")


def list_images(data: dict[str, Any], split: str, source: Path) -> list[tuple[Path, str]]:
    """The split's images as ``(path, where it is listed)``: every image under a folder (recursively, sorted),
    or the lines of a ``.txt`` list (relative lines: to the list's folder), or a list of those."""
    entry = data.get(split)
    if entry is None or entry == "" or entry == []:
        raise BadDataError(f"{source}: no '{split}' entry (the {split} images)")
    root = dataset_root(data, source)
    found: list[tuple[Path, str]] = []
    for item in entry if isinstance(entry, list) else [entry]:
        path = Path(str(item)).expanduser()
        path = path if path.is_absolute() else root / path
        if path.is_dir():
            found += [(p, str(path)) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file() and path.suffix.lower() == ".txt":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    listed = Path(line.strip()).expanduser()
                    found.append((listed if listed.is_absolute() else path.parent / listed, f"{path}:{number}"))
        elif path.is_file():
            found.append((path, str(source)))
        else:
            raise BadDataError(f"{source}: {split}: {item!r}: no such folder, image list or image ({path})")
    return found


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` of the image's path becomes ``/labels/``, the suffix ``.txt``
    (an image path without ``images/`` has its labels beside it)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def parse_label_line(fields: list[str]) -> tuple[int, list[float]] | str:
    """``(class id, [x0, y0, x1, y1] normalised)`` of one line, or the problem with it.

    ``class cx cy w h`` is a box, ``class x1 y1 x2 y2 x3 y3 ...`` a polygon (a segment), whose box is kept;
    either may end with a confidence (predictions written with ``save_conf``), which is ignored."""
    values = fields[1:]
    if len(values) < _BOX_VALUES:
        return f"expected 'class cx cy w h' or a polygon, got {len(fields)} fields"
    try:
        cls = float(fields[0])
    except ValueError:
        return f"class must be an integer, got {fields[0]!r}"
    if not cls.is_integer() or cls < 0:
        return f"class must be an integer >= 0, got {fields[0]!r}"
    numbers = []
    for text in values:
        try:
            numbers.append(float(text))
        except ValueError:
            return f"coordinates must be numbers, got {text!r}"
    if not all(math.isfinite(v) for v in numbers):
        return f"coordinates must be finite, got {' '.join(values)}"
    if len(numbers) in (_BOX_VALUES, _BOX_VALUES + 1):
        cx, cy, w, h = numbers[:_BOX_VALUES]
        return int(cls), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if len(numbers) < _MIN_POLYGON_VALUES:
        return f"a polygon needs at least 3 points, got {len(numbers)} values"
    points = numbers[: len(numbers) - len(numbers) % 2]
    xs, ys = points[0::2], points[1::2]
    return int(cls), [min(xs), min(ys), max(xs), max(ys)]


class YoloDataset(RecordDataset):
    """An Ultralytics YOLO detection dataset, described by its ``data.yaml``.

    ``split`` (``train``/``val``) names the yaml's entry listing the images (see :func:`list_images`); each
    image's boxes are in the ``.txt`` that :func:`label_path` finds, one ``class cx cy w h`` line per box,
    normalised to the image; polygon lines (segmentation labels) become their boxes, and a sixth value
    (a confidence) is ignored. An image without a label file is a background image (a negative).

    Classes are the yaml's ``names`` (a list, or a mapping of class id to name), in id order by default;
    given ``class_names`` (the model's), a used name is mapped to the model's label by name. Image ids are
    ``1..N`` in listing order. Sizes are read from the image headers (YOLO stores none), so a missing or
    unreadable image is found here.

    Bad data (see :mod:`harnet.data.issues`): a label line that is malformed, or names a class id outside
    ``names`` or a name outside ``class_names``, a missing image or an unreadable label file is an error naming
    the file (and line), or with ``skip_bad`` skips that image. Boxes with no area inside the image are dropped
    and listed, boxes partly outside clipped. A broken ``data.yaml`` is always an error.
    """

    def __init__(
        self,
        data_yaml: str | Path,
        split: str = "val",
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        source = Path(data_yaml)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: data.yaml not found")
        log = IssueLog(skip_bad)
        data = load_data_yaml(source)
        names = yolo_names(data, source)
        if class_names is None:
            class_names = list(names.values())
        label_of = {name: label for label, name in enumerate(class_names)}

        records: list[DetectionRecord] = []
        for image_id, (image, listed_in) in enumerate(list_images(data, split, source), start=1):
            record = self._record(image, image_id, listed_in, names, label_of, log)
            if record is not None:
                records.append(record)
        super().__init__(records, class_names=list(class_names), transforms=transforms, issues=log)

    @staticmethod
    def _record(image: Path, image_id: int, listed_in: str, names: dict[int, str], label_of: dict[str, int],
                log: IssueLog) -> DetectionRecord | None:
        """One image's record, or None when it is skipped (the problem is in ``log``)."""
        try:
            width, height = image_size(image)
        except FileNotFoundError:
            log.bad(listed_in, f"image file not found: {image}", error=FileNotFoundError)
            return None
        except BadImageError as e:
            log.bad(listed_in, one_line(e))
            return None
        labels_file = label_path(image)
        boxes: list[list[float]] = []
        labels: list[int] = []
        sources: list[tuple[str, str]] = []
        if labels_file.is_file():
            try:
                text = labels_file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                log.bad(labels_file, "not UTF-8 text")
                return None
            for number, line in enumerate(text.splitlines(), start=1):
                fields = line.split()
                if not fields:
                    continue
                where = f"{labels_file}:{number}"
                parsed = parse_label_line(fields)
                if isinstance(parsed, str):
                    log.bad(where, parsed)
                    return None
                cls, (x0, y0, x1, y1) = parsed
                if cls not in names:
                    log.bad(where, f"class id {cls} is not in names of the data.yaml {names}")
                    return None
                if names[cls] not in label_of:
                    log.bad(where, f"class {names[cls]!r} (id {cls}) is not in class_names {list(label_of)}")
                    return None
                boxes.append([x0 * width, y0 * height, x1 * width, y1 * height])
                labels.append(label_of[names[cls]])
                sources.append((where, f"class {names[cls]!r} {' '.join(fields[1:])}"))
        raw = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        kept_boxes, kept_labels = keep_valid_boxes(raw, torch.tensor(labels, dtype=torch.int64), width, height, log,
                                                   sources)
        return DetectionRecord(path=image, width=width, height=height, image_id=image_id, boxes=kept_boxes,
                               labels=kept_labels)
