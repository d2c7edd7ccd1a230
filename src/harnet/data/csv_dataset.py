"""CSV detection dataset: one ``image_path,xmin,ymin,xmax,ymax,label`` row per box (keras-retinanet)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harnet.data.image_io import BadImageError, image_size
from harnet.data.issues import SKIPPED_IMAGE, SKIPPED_ROW, BadDataError, IssueLog
from harnet.data.records import DetectionRecord, RecordDataset, Transform, keep_valid_boxes
from harnet.utils.errors import one_line

_BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class CsvRow:
    """One data row. ``box``/``label`` are ``None`` for an image listed without objects."""

    line: int
    image: str
    box: tuple[float, float, float, float] | None
    label: str | None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_row(fields: list[str]) -> CsvRow | str:
    """A row, or the problem with it."""
    if len(fields) != 6:
        return f"expected 6 fields image_path,xmin,ymin,xmax,ymax,label, got {len(fields)}"
    image, coords, label = fields[0], fields[1:5], fields[5]
    if not image:
        return "empty image path"
    if not any(coords) and not label:
        return CsvRow(line=0, image=image, box=None, label=None)
    if not all(coords) or not label:
        return "box fields and label must be all filled or all empty"
    values = []
    for name, text in zip(_BOX_FIELDS, coords, strict=True):
        try:
            value = float(text)
        except ValueError:
            return f"{name} must be a number, got {text!r}"
        if not math.isfinite(value):
            return f"{name} must be finite, got {text!r}"
        values.append(value)
    return CsvRow(line=0, image=image, box=tuple(values), label=label)  # type: ignore[arg-type]


def parse_csv_annotations(
    lines: Iterable[str], source: str | Path, issues: IssueLog | None = None, bad_images: set[str] | None = None
) -> list[CsvRow]:
    """Parse CSV annotation text into rows.

    Every problem is a ``ValueError`` naming ``source:line``, or with a skipping ``issues`` log, a
    listed issue; the row's image (when it names one) is added to ``bad_images`` to be skipped whole. The header is
    optional: a first row whose four coordinate fields are all non-empty and non-numeric is taken as
    one. That test is strict so a typo in the first data row is reported as an error instead of being
    skipped as a "header". A row ``image,,,,,`` lists an image with no objects (a negative example).
    Coordinates are 0-based continuous pixel corners, used as written; NaN/inf are errors.
    """
    log = issues if issues is not None else IssueLog()
    rows: list[CsvRow] = []
    if bad_images is None:
        bad_images = set()
    reader = csv.reader(lines)
    first = True
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if first and len(fields) == 6 and all(f and not _is_number(f) for f in fields[1:5]):
            first = False
            continue
        first = False
        row = _parse_row(fields)
        if isinstance(row, str):
            image = fields[0] if fields else ""
            log.bad(f"{source}:{line}", row, SKIPPED_IMAGE if image else SKIPPED_ROW)
            bad_images.add(image)
            continue
        row.line = line
        rows.append(row)
    return rows


class CsvDataset(RecordDataset):
    """Images and boxes listed in a CSV file.

    Image paths are relative to the CSV's folder unless ``image_root`` is given (absolute paths are kept).
    Images get ids ``1..N`` in order of first appearance; ``class_names`` defaults to the sorted set of
    labels, and a label outside a given list is an error. Image sizes are read from the file headers
    at construction (the CSV does not store them, and boxes must be clipped), so a missing or unreadable
    image is reported immediately with its CSV line. With ``skip_bad`` every such problem skips the
    image instead (see :mod:`harnet.data.issues`); boxes with no area inside the image are dropped.
    """

    def __init__(
        self,
        csv_file: str | Path,
        image_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        csv_file = Path(csv_file)
        log = IssueLog(skip_bad)
        if not csv_file.is_file():
            raise FileNotFoundError(f"{csv_file}: annotation file not found")
        try:
            with csv_file.open(newline="", encoding="utf-8") as handle:
                bad_images: set[str] = set()
                rows = parse_csv_annotations(handle, csv_file, log, bad_images)
        except UnicodeDecodeError:
            raise BadDataError(f"{csv_file}: not UTF-8 text") from None
        except csv.Error as e:
            raise BadDataError(f"{csv_file}: malformed CSV ({e})") from None
        if class_names is None:
            class_names = sorted({r.label for r in rows if r.label is not None and r.image not in bad_images})
        label_of = {name: label for label, name in enumerate(class_names)}
        base = Path(image_root) if image_root is not None else csv_file.parent

        by_image: dict[str, list[CsvRow]] = {}
        for row in rows:
            if row.label is not None and row.label not in label_of and row.image not in bad_images:
                log.bad(f"{csv_file}:{row.line}", f"label {row.label!r} is not in class_names")
                bad_images.add(row.image)
            by_image.setdefault(row.image, []).append(row)

        records: list[DetectionRecord] = []
        for image_id, (image, image_rows) in enumerate(by_image.items(), start=1):
            if image in bad_images:
                continue
            path = base / image
            where = f"{csv_file}:{image_rows[0].line}"
            try:
                width, height = image_size(path)
            except FileNotFoundError:
                log.bad(where, f"image file not found: {path}", error=FileNotFoundError)
                continue
            except BadImageError as e:
                log.bad(where, one_line(e))
                continue
            objects = [r for r in image_rows if r.box is not None]
            raw = torch.tensor([r.box for r in objects], dtype=torch.float32).reshape(-1, 4)
            labels = torch.tensor([label_of[r.label] for r in objects], dtype=torch.int64)  # type: ignore[index]
            sources = [(f"{csv_file}:{r.line}", f"box {list(r.box)}") for r in objects]  # type: ignore[arg-type]
            boxes, labels = keep_valid_boxes(raw, labels, width, height, log, sources)
            records.append(
                DetectionRecord(path=path, width=width, height=height, image_id=image_id, boxes=boxes, labels=labels)
            )
        super().__init__(records, class_names=list(class_names), transforms=transforms, issues=log)
