"""CSV detection dataset: one ``image_path,xmin,ymin,xmax,ymax,label`` row per box (keras-retinanet)."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harnet.data.image_io import image_size
from harnet.data.records import DetectionRecord, RecordDataset, Transform, clip_valid_boxes

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


def parse_csv_annotations(lines: Iterable[str], source: str | Path) -> list[CsvRow]:
    """Parse CSV annotation text; every problem is a ``ValueError`` naming ``source:line``.

    The header is optional: a first row whose four coordinate fields are all non-empty and
    non-numeric is taken as one. That test is strict so a typo in the first data row is reported as
    an error instead of being skipped as a "header". A row ``image,,,,,`` lists an image with no objects
    (a negative example). Coordinates are 0-based continuous pixel corners, used as written.
    """
    rows: list[CsvRow] = []
    reader = csv.reader(lines)
    first = True
    for fields in reader:
        line = reader.line_num
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue
        if len(fields) != 6:
            raise ValueError(
                f"{source}:{line}: expected 6 fields image_path,xmin,ymin,xmax,ymax,label, got {len(fields)}"
            )
        if first and all(f and not _is_number(f) for f in fields[1:5]):
            first = False
            continue
        first = False
        image, coords, label = fields[0], fields[1:5], fields[5]
        if not image:
            raise ValueError(f"{source}:{line}: empty image path")
        if not any(coords) and not label:
            rows.append(CsvRow(line=line, image=image, box=None, label=None))
            continue
        if not all(coords) or not label:
            raise ValueError(f"{source}:{line}: box fields and label must be all filled or all empty")
        values = []
        for name, text in zip(_BOX_FIELDS, coords, strict=True):
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{source}:{line}: {name} must be a number, got {text!r}") from None
            values.append(value if math.isfinite(value) else math.nan)
        rows.append(CsvRow(line=line, image=image, box=tuple(values), label=label))  # type: ignore[arg-type]
    return rows


class CsvDataset(RecordDataset):
    """Images and boxes listed in a CSV file.

    Image paths are relative to the CSV's folder unless ``image_root`` is given (absolute paths are kept).
    Images get ids ``1..N`` in order of first appearance; ``class_names`` defaults to the sorted set of
    labels, and a label outside a given list is an error. Image sizes are read from the file headers
    at construction (the CSV does not store them, and boxes must be clipped), so a missing image is
    reported immediately with its CSV line.
    """

    def __init__(
        self,
        csv_file: str | Path,
        image_root: str | Path | None = None,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
    ) -> None:
        csv_file = Path(csv_file)
        with csv_file.open(newline="", encoding="utf-8") as handle:
            rows = parse_csv_annotations(handle, csv_file)
        if class_names is None:
            class_names = sorted({r.label for r in rows if r.label is not None})
        label_of = {name: label for label, name in enumerate(class_names)}
        base = Path(image_root) if image_root is not None else csv_file.parent

        by_image: dict[str, list[CsvRow]] = {}
        for row in rows:
            if row.label is not None and row.label not in label_of:
                raise ValueError(f"{csv_file}:{row.line}: label {row.label!r} is not in class_names")
            by_image.setdefault(row.image, []).append(row)

        records: list[DetectionRecord] = []
        num_invalid = 0
        for image_id, (image, image_rows) in enumerate(by_image.items(), start=1):
            path = base / image
            try:
                width, height = image_size(path)
            except FileNotFoundError:
                where = f"{csv_file}:{image_rows[0].line}"
                raise FileNotFoundError(f"{where}: image file not found: {path}") from None
            objects = [r for r in image_rows if r.box is not None]
            raw = torch.tensor([r.box for r in objects], dtype=torch.float32).reshape(-1, 4)
            boxes, keep = clip_valid_boxes(raw, width, height)
            labels = torch.tensor([label_of[r.label] for r in objects], dtype=torch.int64)  # type: ignore[index]
            num_invalid += int((~keep).sum())
            records.append(
                DetectionRecord(
                    path=path,
                    width=width,
                    height=height,
                    image_id=image_id,
                    boxes=boxes[keep],
                    labels=labels[keep],
                )
            )
        super().__init__(
            records,
            class_names=list(class_names),
            transforms=transforms,
            num_invalid_boxes=num_invalid,
        )
