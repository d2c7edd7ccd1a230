"""The format-independent core shared by every dataset: one record per image, turned into a sample.

COCO, VOC and CSV differ only in how annotations are parsed. Each parser produces a list of
:class:`DetectionRecord`; :class:`RecordDataset` does everything after that (image loading, target
construction, transforms), and :func:`build_coco` turns records into a ``pycocotools`` ground truth so
that the evaluator can run ``COCOeval`` on any format without knowing where the data came from.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import ops, tv_tensors

from harnet.config.model import InputConfig
from harnet.data.image_io import BadImageError, ImageBands, image_size, load_bands, probe_image
from harnet.data.issues import DROPPED_BOX, SKIPPED_IMAGE, BadDataError, IssueLog
from harnet.deploy.image_bands import chosen_bands
from harnet.utils.image_decode import check_size

Target = dict[str, Any]
Sample = tuple[tv_tensors.Image, Target]
Transform = Callable[[tv_tensors.Image, Target], Sample]


def _empty_boxes() -> torch.Tensor:
    return torch.zeros((0, 4), dtype=torch.float32)


def _empty_labels() -> torch.Tensor:
    return torch.zeros((0,), dtype=torch.int64)


@dataclass
class DetectionRecord:
    """Everything known about one image before it is decoded.

    ``boxes`` (XYXY, float32, already clipped and valid) and ``labels`` (contiguous, int64) are the
    training targets. ``ignored_boxes``/``ignored_labels`` are objects that must not be trained on but
    also must not be counted as false positives (VOC ``difficult``); they only enter the COCO ground
    truth, as ``iscrowd=1`` regions.
    """

    path: Path
    width: int
    height: int
    image_id: int
    boxes: torch.Tensor = field(default_factory=_empty_boxes)
    labels: torch.Tensor = field(default_factory=_empty_labels)
    ignored_boxes: torch.Tensor = field(default_factory=_empty_boxes)
    ignored_labels: torch.Tensor = field(default_factory=_empty_labels)


def clip_valid_boxes(boxes_xyxy: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip XYXY boxes to the image and say which survive.

    A box is invalid when any coordinate is non-finite, when it has no positive width/height as
    annotated, or when nothing of it is left inside the image. Returns ``(clipped_boxes, keep_mask)``;
    callers count ``(~keep_mask).sum()`` so that silently broken annotation files become visible.
    """
    boxes_xyxy = boxes_xyxy.reshape(-1, 4).to(torch.float32)
    finite = torch.isfinite(boxes_xyxy).all(dim=1)
    safe = torch.where(finite[:, None], boxes_xyxy, torch.zeros_like(boxes_xyxy))
    positive = (safe[:, 2] > safe[:, 0]) & (safe[:, 3] > safe[:, 1])
    clipped = ops.clip_boxes_to_image(safe, (height, width))
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, finite & positive & inside


def keep_valid_boxes(
    boxes_xyxy: torch.Tensor, labels: torch.Tensor, width: int, height: int, log: IssueLog,
    sources: Sequence[tuple[str, str]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`clip_valid_boxes`, recording each dropped box in ``log``.

    ``sources[i]`` is ``(file, description)`` of box ``i``, e.g. ``("ann.json", "annotations[3] (bbox
    [5, 5, 0, 4])")``, so the list in the run folder says exactly which annotation was dropped.
    """
    boxes, keep = clip_valid_boxes(boxes_xyxy, width, height)
    for i in (~keep).nonzero().flatten().tolist():
        file, description = sources[i]
        log.dropped(file, f"{description} has no area inside the {width}x{height} image")
    return boxes[keep], labels[keep]


def finite_box(values: Sequence[float]) -> bool:
    """True when every coordinate is a finite number (NaN/inf boxes are errors, not dropped boxes)."""
    return bool(torch.isfinite(torch.tensor(values, dtype=torch.float64)).all())


def build_coco(
    records: Sequence[DetectionRecord], class_names: Sequence[str], category_ids: Sequence[int]
) -> COCO:
    """Build an in-memory ``pycocotools`` ground truth from records.

    Trained-on boxes become ``iscrowd=0`` annotations and ignored boxes ``iscrowd=1``, which is exactly
    how COCOeval already treats regions that neither need to be found nor count against a detector.
    """
    images = [
        {"id": r.image_id, "file_name": r.path.name, "width": r.width, "height": r.height} for r in records
    ]
    annotations: list[dict[str, Any]] = []
    for record in records:
        for boxes, labels, crowd in (
            (record.boxes, record.labels, 0),
            (record.ignored_boxes, record.ignored_labels, 1),
        ):
            for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": record.image_id,
                        "category_id": int(category_ids[label]),
                        "bbox": [box[0], box[1], w, h],
                        "area": w * h,
                        "iscrowd": crowd,
                    }
                )
    categories = [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names, strict=True)]
    return coco_from_dict({"images": images, "annotations": annotations, "categories": categories})


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """Wrap an already-loaded COCO dict without pycocotools' progress prints on stdout."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class RecordDataset(Dataset[Sample]):
    """Map-style dataset over :class:`DetectionRecord` s, implementing the common sample contract.

    ``__getitem__`` returns ``(image, target)``: a float32 ``tv_tensors.Image`` (C, H, W) and
    ``{"boxes": BoundingBoxes XYXY (n, 4), "labels": int64 (n,), "image_id": int}``, after
    ``transforms`` if given. Subclasses only parse their format and call ``__init__``.

    The image is the RGB of an ordinary image in [0, 1] (C = 3), or the ``bands`` (1-based, default all) of a
    raster in their own units with NaN where nodata (:func:`harnet.data.image_io.load_bands`). Every image
    must have the same band count and data type: :meth:`check_images` checks them and records them in
    ``input`` (the model input these images make).
    """

    def __init__(
        self,
        records: Sequence[DetectionRecord],
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        coco: COCO | None = None,
        transforms: Transform | None = None,
        num_invalid_boxes: int | None = None,
        issues: IssueLog | None = None,
    ) -> None:
        # Formats without category ids of their own (VOC, CSV) number their classes 1..K.
        if category_ids is None:
            category_ids = range(1, len(class_names) + 1)
        if len(class_names) != len(category_ids):
            raise ValueError(f"{len(class_names)} class names but {len(category_ids)} category ids")
        self.records = list(records)
        self.class_names: list[str] = list(class_names)
        self.category_ids: list[int] = [int(c) for c in category_ids]
        self.coco: COCO = coco if coco is not None else build_coco(self.records, class_names, category_ids)
        self.transforms = transforms
        # What the parser dropped or skipped (see harnet.data.issues); shared with check_images.
        self.issues = issues if issues is not None else IssueLog()
        # Boxes dropped while parsing (degenerate or outside the image).
        if num_invalid_boxes is None:
            num_invalid_boxes = self.issues.counts().get(DROPPED_BOX, 0)
        self.num_invalid_boxes = num_invalid_boxes
        # The image bands read (data.bands; build_dataset sets them before check_images), None: all.
        self.bands: tuple[int, ...] | None = None
        # What the images are, as a model input (channels, bands, dtype): set by check_images.
        self.input: InputConfig | None = None
        self._probes: dict[Path, ImageBands] = {}  # how each image is read (check_images), not probed again

    def drop_images(self, image_ids: set[int]) -> None:
        """Remove images from the records and from the COCO ground truth (so AP is not charged for them)."""
        if not image_ids:
            return
        self.records = [r for r in self.records if r.image_id not in image_ids]
        data = self.coco.dataset
        self.coco = coco_from_dict({
            **data,
            "images": [im for im in data["images"] if im["id"] not in image_ids],
            "annotations": [a for a in data.get("annotations", []) if a["image_id"] not in image_ids],
        })

    def check_images(self, decode: bool = False, threads: int | None = None, expect: InputConfig | None = None) -> None:
        """Open every image before training so a bad file is found now, not hours into a run.

        Reads each header (exists, not empty, an image, within ``MAX_PIXELS``, size as annotated after
        EXIF orientation, ``bands`` in range); ``decode=True`` also decodes the pixels, which is the only way
        to find truncated files (what ``--skip-bad`` does, at the cost of one full read of the dataset, run on
        ``threads`` threads since PIL decodes without holding the GIL). Every image must have the band count
        and data type of ``expect`` (a model's input), else of the first image; ``input`` records them.
        Strict logs raise on the first bad image in record order; skipping logs drop the image from records and
        ground truth.
        """
        threads = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            inspected = list(pool.map(lambda r: _inspect(r, decode, self.bands), self.records))
        reference: tuple[int, str] | None = None if expect is None else (expect.channels, expect.dtype)
        owner = "the model reads"
        bad: set[int] = set()
        for record, (problem, info) in zip(self.records, inspected, strict=True):
            if problem is None and info is not None:
                kind = (len(self.bands) if self.bands else info.count, info.dtype)
                if reference is None:
                    reference, owner = kind, f"the first image ({record.path}) has"
                elif kind != reference:
                    problem = BadImageError(f"{record.path}: {_bands(*kind)}, {owner} {_bands(*reference)}; "
                                            "every image of a dataset needs the same bands")
            if problem is not None:
                self.issues.reject(problem, record.path, SKIPPED_IMAGE)
                bad.add(record.image_id)
            elif info is not None:
                self._probes[record.path] = info
        self.drop_images(bad)
        if reference is not None:
            self.input = InputConfig(reference[0], self.bands, reference[1])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        image = load_bands(record.path, self.bands, self._probes.get(record.path))
        if self.input is not None and image.shape[0] != self.input.channels:  # the file changed since the check
            raise BadDataError(f"{record.path}: {image.shape[0]} band(s), the dataset's images have "
                               f"{self.input.channels}")
        height, width = image.shape[-2:]
        if (width, height) != (record.width, record.height):
            raise BadDataError(_size_mismatch(record, width, height))
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(
                record.boxes.clone(), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height, width)
            ),
            "labels": record.labels.clone(),
            "image_id": record.image_id,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _size_mismatch(record: DetectionRecord, width: int, height: int) -> str:
    return (f"{record.path}: image is {width}x{height} (after EXIF orientation) but the annotations say "
            f"{record.width}x{record.height}")


def _bands(channels: int, dtype: str) -> str:
    return f"{channels} band{'s' * (channels != 1)} of {dtype}"


def _inspect(record: DetectionRecord, decode: bool,
             bands: tuple[int, ...] | None) -> tuple[Exception | None, ImageBands | None]:
    """The problem with ``record``'s image file as an exception naming the file (or ``None``), and how it is read."""
    try:
        info = probe_image(record.path)
        chosen_bands(record.path, info, bands)
        if decode:
            height, width = load_bands(record.path, bands, info).shape[-2:]
        elif info.reader == "pil":
            width, height = image_size(record.path)
        else:
            width, height = info.size
            check_size(record.path, width, height)
    except (FileNotFoundError, BadImageError) as e:
        return e, None
    if (width, height) != (record.width, record.height):
        return BadDataError(_size_mismatch(record, width, height)), None
    return None, info
