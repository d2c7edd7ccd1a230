"""What ``harnet predict`` writes, for every input kind and every backend: one record format, one writer.

``detections.json`` holds COCO-style records (XYWH pixel boxes, the dataset's category ids) of every image
and raster; it is written last, so a complete ``detections.json`` means a finished call. With ``--format``
the same detections are also written as pre-annotations a labelling tool imports (COCO, Label Studio, CVAT,
YOLO: :mod:`harnet.deploy.annotation_formats`), before ``detections.json``. Unreadable inputs
are listed in ``skipped.txt``, never fatal to the rest. Output names come from the input stems, made
unique when two inputs share a stem (``a/ortho.tif`` and ``b/ortho.tif``), so no output replaces another.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.annotation_formats import PREDICTION_FILES, AnnotatedImage, image_names, write_annotations
from harnet.utils.atomic import write_text_atomic
from harnet.utils.errors import first_line, one_line

# What prediction writes into its output folder, and what a call without --shard replaces as a set when it
# writes there again ("records": the per-input results of harnet.deploy.records).
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt", "*.gpkg", "*.geojson", "*_pred.mp4",
                   "*_detections.jsonl", "records", *PREDICTION_FILES.values())

Size = tuple[int, int]  # (width, height) in pixels


@dataclass
class PredictReport:
    detections: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    notes: list[str] = field(default_factory=list)  # "path: advice" (e.g. use --tile)
    sizes: dict[str, Size] = field(default_factory=dict)  # str(path) -> (width, height) as predicted

    def skip(self, path: Path | str, error: BaseException | str) -> None:
        """An unreadable file (or raster window): one line naming it, the rest still processed."""
        message = error if isinstance(error, str) else one_line(error)
        self.skipped.append(message if str(path) in message else f"{path}: {message}")

    def add(self, path: Path | str, det: dict[str, Any], category_ids: Sequence[int], size: Size) -> None:
        """One image's detections as COCO-style records (XYWH pixel boxes, the dataset's category ids), and
        its ``size`` (width, height) as predicted (EXIF orientation applied), which ``--format`` files hold."""
        self.images.append(str(path))
        self.sizes[str(path)] = (int(size[0]), int(size[1]))
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), det["names"]):
            x0, y0, x1, y1 = box
            self.detections.append({
                "file_name": str(path), "category_id": category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })

    def annotated_images(self, category_ids: Sequence[int]) -> list[AnnotatedImage]:
        """Every predicted image with its detections (boxes XYXY, labels, scores), named as
        :func:`~harnet.deploy.annotation_formats.image_names` names them."""
        label_of = {int(c): label for label, c in enumerate(category_ids)}
        by_file: dict[str, list[dict[str, Any]]] = {path: [] for path in self.images}
        for d in self.detections:
            by_file[d["file_name"]].append(d)
        images = []
        for path, name in zip(self.images, image_names(self.images), strict=True):
            width, height = self.sizes[path]
            dets = by_file[path]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]
            labels = [label_of[int(d["category_id"])] for d in dets]
            images.append(AnnotatedImage(name, width, height, np.array(boxes, dtype=np.float64), np.array(labels),
                                         np.array([d["score"] for d in dets]), path=Path(path)))
        return images

    def write_formats(self, out_dir: Path, formats: Sequence[str], class_names: Sequence[str],
                      category_ids: Sequence[int]) -> list[Path]:
        """The detections as pre-annotations in each of ``formats``, named by
        :data:`~harnet.deploy.annotation_formats.PREDICTION_FILES` in ``out_dir``; returns what was written.
        A format that cannot be written is one line in ``skipped`` (detections.json still follows)."""
        if not formats or not self.images:
            return []
        images = self.annotated_images(category_ids)
        written = []
        for fmt in formats:
            target = out_dir / PREDICTION_FILES[fmt]
            try:
                written.append(write_annotations(fmt, images, class_names, target, category_ids))
            except Exception as e:
                self.skip(target, f"not written ({one_line(e)})")
        return written

    def write(self, out_dir: Path) -> None:
        """skipped.txt (when any) and detections.json, last, so a complete detections.json means a finished call."""
        if self.skipped:
            write_text_atomic("\n".join(self.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(self.detections, indent=1), out_dir / "detections.json")


def output_stems(paths: Sequence[Path | str]) -> list[str]:
    """The name each input's outputs get: its stem, or ``<parent>_<stem>`` (then ``-2``, ``-3``, ...) where
    two inputs share a stem, so that no input's picture or map replaces another's."""
    stems = [Path(p).stem for p in paths]
    clashes = {s for s, n in Counter(stems).items() if n > 1}
    named = [f"{Path(p).parent.name or 'input'}_{s}" if s in clashes else s for p, s in zip(paths, stems)]
    seen: Counter[str] = Counter()
    out = []
    for name in named:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def check_writable(out_dir: Path) -> None:
    """Make ``out_dir`` and prove a file can be written there, before any prediction: a read-only folder
    fails in one line naming it, not after an hour of windows naming a temp file."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".harnet-probe-"):
            pass
    except OSError as e:
        raise PermissionError(f"{out_dir}: output folder is not writable ({first_line(e)})") from None
