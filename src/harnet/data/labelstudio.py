"""Label Studio JSON export: a list of tasks, each an image and its annotations' ``rectanglelabels``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import torch

from harnet.data.image_io import BadImageError, image_size
from harnet.data.issues import BadDataError, DataIssue, IssueLog, read_json
from harnet.data.records import DetectionRecord, RecordDataset, Transform, keep_valid_boxes
from harnet.utils.errors import one_line

# Listed in both modes: a task nobody labelled is neither an error nor a background image.
UNLABELLED_TASK = "unlabelled task"


@dataclass
class StudioBox:
    """One result: its label, its box in pixels (XYXY, the bounding box of a rotated rectangle or of a
    polygon) once the image size is known, and where it is in the file."""

    label: str
    percent: list[float]  # x, y, width, height, rotation (degrees) in percent of the image; or polygon points
    polygon: bool
    where: str

    def pixels(self, width: int, height: int) -> list[float]:
        if self.polygon:
            xs = [v * width / 100 for v in self.percent[0::2]]
            ys = [v * height / 100 for v in self.percent[1::2]]
            return [min(xs), min(ys), max(xs), max(ys)]
        x, y, w, h, rotation = self.percent
        x, w = x * width / 100, w * width / 100
        y, h = y * height / 100, h * height / 100
        if rotation == 0:
            return [x, y, x + w, y + h]
        # Label Studio turns the rectangle about its top-left corner, clockwise on screen (y points down).
        cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        xs = [x, x + w * cos, x + w * cos - h * sin, x - h * sin]
        ys = [y, y + w * sin, y + w * sin + h * cos, y + h * cos]
        return [min(xs), min(ys), max(xs), max(ys)]


@dataclass
class StudioTask:
    """One task: the image it names, its boxes, and the image size the export states (None: not stated)."""

    image: str
    boxes: list[StudioBox]
    size: tuple[int, int] | None
    where: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def image_reference(task: dict[str, Any]) -> str | None:
    """The task's image: ``data.image``, else the one string in ``data`` (a template with another name)."""
    data = task.get("data")
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str) and data["image"]:
        return str(data["image"])
    strings = [v for v in data.values() if isinstance(v, str) and v]
    return strings[0] if len(strings) == 1 else None


def file_candidates(reference: str) -> list[str]:
    """Paths (relative to the image folder) the image may have, in the order tried: a relative reference as it
    is (``dir/x.jpg``, or the ``?d=dir/x.jpg`` of local files storage), then its last part (``/data/upload/1/
    ab12-x.jpg``, ``s3://bucket/x.jpg``, URL-quoted or not) and, since Label Studio prefixes uploaded files
    with a random id and ``-``, what follows the first ``-``."""
    text = unquote(reference)
    text = text.split("?d=", 1)[1] if "?d=" in text else text.split("?", 1)[0]
    name = text.rstrip("/").rsplit("/", 1)[-1]
    names = [text] if "/" in text.strip("/") and "://" not in text and not text.startswith("/") else []
    names.append(name)
    if "-" in name and name.split("-", 1)[1]:
        names.append(name.split("-", 1)[1])
    return names


def _parse_result(result: Any, where: str) -> StudioBox | str | None:
    """A box, the problem with the result, or None for a result of another kind (choices, text, ...)."""
    if not isinstance(result, dict):
        return "must be an object"
    kind = result.get("type")
    if kind not in ("rectanglelabels", "polygonlabels"):
        return None
    value = result.get("value")
    if not isinstance(value, dict):
        return "has no 'value' object"
    names = value.get(kind)
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        return f"'{kind}' must hold one label, got {names!r}"
    if kind == "polygonlabels":
        points = value.get("points")
        if (not isinstance(points, list) or len(points) < 3
                or not all(isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p) for p in points)):
            return f"'points' must be at least 3 [x, y] pairs of finite numbers, got {points!r}"
        return StudioBox(names[0], [float(v) for p in points for v in p], True, where)
    keys = ("x", "y", "width", "height")
    if not all(_number(value.get(k)) for k in keys) or not _number(value.get("rotation", 0)):
        return f"needs finite numbers x, y, width, height (and rotation), got {[value.get(k) for k in keys]}"
    return StudioBox(names[0], [float(value[k]) for k in keys] + [float(value.get("rotation", 0))], False, where)


def _stated_size(results: list[Any]) -> tuple[int, int] | None:
    """The image size the results state (``original_width``/``original_height``), if any does."""
    for result in results:
        if isinstance(result, dict) and _number(result.get("original_width")) and _number(
                result.get("original_height")):
            width, height = int(result["original_width"]), int(result["original_height"])
            if width >= 1 and height >= 1:
                return width, height
    return None


def parse_tasks(data: Any, source: Path, log: IssueLog) -> list[tuple[int, StudioTask]]:
    """``(image id, task)`` of every usable task; ids are positions ``1..N`` in the export, so a skipped
    task leaves the others' ids alone. The first annotation not cancelled is the task's ground truth."""
    if not isinstance(data, list):
        raise BadDataError(f"{source}: top level must be a list of tasks (Label Studio's JSON export), "
                           f"got {type(data).__name__}")
    tasks = []
    for i, task in enumerate(data):
        where = f"tasks[{i}]"
        if not isinstance(task, dict):
            log.bad(source, f"{where} must be an object")
            continue
        if task.get("id") is not None:
            where += f" (id {task['id']})"
        reference = image_reference(task)
        if reference is None:
            log.bad(source, f"{where} names no image ('data.image')")
            continue
        annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            log.items.append(DataIssue(str(source), f"{where} ({reference}) has no annotation", UNLABELLED_TASK))
            continue
        results = annotations[0].get("result")
        if not isinstance(results, list):
            log.bad(source, f"{where}: annotations[0].result must be a list")
            continue
        boxes: list[StudioBox] = []
        problem = None
        for k, result in enumerate(results):
            parsed = _parse_result(result, f"{where} result[{k}]")
            if isinstance(parsed, str):
                problem = f"{where} result[{k}] {parsed}"
                break
            if parsed is not None:
                boxes.append(parsed)
        if problem is not None:
            log.bad(source, problem)
            continue
        tasks.append((i + 1, StudioTask(reference, boxes, _stated_size(results), where)))
    return tasks


class LabelStudioDataset(RecordDataset):
    """The tasks of a Label Studio JSON export (``[{"data": {"image": ...}, "annotations": [{"result": [...]}]}]``).

    Boxes are ``rectanglelabels`` results, ``x``/``y``/``width``/``height`` in percent of the image; a rotated
    rectangle (``rotation``, degrees about its top-left corner) becomes its bounding box, and so does a
    ``polygonlabels`` polygon. Other results (choices, text, keypoints) are ignored. The image size is the
    export's ``original_width``/``original_height`` where present, else the image header's.

    Images are looked up in ``image_dir`` by relative path, then by file name (:func:`file_candidates`: Label
    Studio's upload prefix is stripped when the prefixed name does not exist). Image ids are task positions
    ``1..N``. A task without an annotation is left out and listed (unlabelled, not a negative); one whose
    annotation has no boxes is a background image. Of several annotations (several annotators) the first
    not cancelled counts. ``predictions`` (pre-annotations) are not ground truth and are not read.

    Classes are the labels seen, sorted, unless ``class_names`` (the model's) are given. Bad data (see
    :mod:`harnet.data.issues`): a task or result that is malformed, an unknown label or a missing image is an
    error naming the file and the task, or with ``skip_bad`` skips the task. Boxes with no area inside the
    image are dropped and listed. A file that is not a JSON list of tasks is always an error.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_dir: str | Path,
        class_names: Sequence[str] | None = None,
        transforms: Transform | None = None,
        *,
        skip_bad: bool = False,
    ) -> None:
        source, image_dir = Path(json_file), Path(image_dir)
        log = IssueLog(skip_bad)
        tasks = parse_tasks(read_json(source), source, log)
        if class_names is None:
            class_names = sorted({box.label for _, task in tasks for box in task.boxes})
        label_of = {name: label for label, name in enumerate(class_names)}

        records: list[DetectionRecord] = []
        for image_id, task in tasks:
            unknown = next((b for b in task.boxes if b.label not in label_of), None)
            if unknown is not None:
                log.bad(source, f"{unknown.where}: label {unknown.label!r} is not in class_names {list(class_names)}")
                continue
            names = file_candidates(task.image)
            path = next((image_dir / n for n in names if (image_dir / n).is_file()), image_dir / names[0])
            if not path.is_file():
                log.bad(source, f"{task.where}: image {task.image!r} not found in {image_dir} (looked for "
                                f"{' and '.join(names)})", error=FileNotFoundError)
                continue
            if task.size is not None:
                width, height = task.size
            else:
                try:
                    width, height = image_size(path)
                except BadImageError as e:
                    log.bad(source, f"{task.where}: {one_line(e)}")
                    continue
            raw = torch.tensor([b.pixels(width, height) for b in task.boxes], dtype=torch.float64).reshape(-1, 4)
            labels = torch.tensor([label_of[b.label] for b in task.boxes], dtype=torch.int64)
            sources = [(str(source), f"{b.where} ({b.label!r})") for b in task.boxes]
            boxes, labels = keep_valid_boxes(raw, labels, width, height, log, sources)
            records.append(DetectionRecord(path=path, width=width, height=height, image_id=image_id, boxes=boxes,
                                           labels=labels))
        super().__init__(records, class_names=list(class_names), transforms=transforms, issues=log)
