"""``harnet predict``: detections for files, folders or globs, written as JSON and annotated PNGs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from harnet.deploy.draw import CLASS_COLORS as CLASS_COLORS
from harnet.deploy.draw import DRAW_MIN_SIZE
from harnet.deploy.draw import draw_detections as draw_numpy
from harnet.deploy.files import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from harnet.deploy.files import expand_inputs as expand_inputs
from harnet.engine.predictor import Detector
from harnet.engine.runfolder import remove_outputs
from harnet.utils.atomic import atomic_file, write_text_atomic
from harnet.utils.errors import one_line

# What predict_files writes into its output folder, and replaces as a set when it writes there again.
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt")


def draw_detections(
    image: Tensor, boxes: Tensor, labels: Sequence[int], scores: Sequence[float], class_names: Sequence[str],
    min_size: int = DRAW_MIN_SIZE,
) -> Image.Image:
    """The image with its detections drawn, readable at a glance (:func:`harnet.deploy.draw.draw_detections`,
    the torch-free drawing that ``python -m harnet.deploy`` uses too, so both give the same pictures).

    ``image`` is a float CHW tensor in [0, 1] (one channel is drawn as grey) and ``boxes`` (n, 4) XYXY in its
    pixels. An image whose short side is under ``min_size`` is upscaled (bilinear) to that size first, and
    line width and font size follow the drawing's size, so a 128 px image still gets legible labels. Each
    class has its own colour; the label "name score" sits on a filled tag above its box (inside it at the
    top edge), and higher-scoring boxes are drawn last, on top."""
    pixels = image.detach().float().cpu()
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return draw_numpy(pixels.numpy(), boxes.detach().float().cpu().numpy(), labels, scores, class_names, min_size)


@dataclass
class PredictReport:
    detections: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    notes: list[str] = field(default_factory=list)  # "path: advice" (e.g. use --tile)

    def skip(self, path: Path, error: BaseException) -> None:
        """An unreadable file (or raster window): one line naming it, the rest still processed."""
        message = one_line(error)
        self.skipped.append(message if str(path) in message else f"{path}: {message}")

    def add(self, path: Path, det: dict[str, Any], category_ids: Sequence[int]) -> None:
        """One image's detections as COCO-style records (XYWH pixel boxes, the dataset's category ids)."""
        self.images.append(str(path))
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), det["names"]):
            x0, y0, x1, y1 = box
            self.detections.append({
                "file_name": str(path), "category_id": category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })

    def write(self, out_dir: Path) -> None:
        """skipped.txt (when any) and detections.json, last, so a complete detections.json means a finished call."""
        if self.skipped:
            write_text_atomic("\n".join(self.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(self.detections, indent=1), out_dir / "detections.json")


def predict_files(
    detector: Detector, paths: list[Path], out_dir: Path | None, score_thresh: float,
    draw_min_size: int = DRAW_MIN_SIZE,
) -> PredictReport:
    """Run the detector on each file; unreadable files are listed in ``skipped``, not fatal.

    With ``out_dir``, the outputs of an earlier call there (:data:`PREDICT_OUTPUTS`) are deleted first, so the
    folder never mixes two calls' pictures; each image is drawn there with its detections
    (:func:`draw_detections`), every file written atomically, detections.json last.
    """
    report = PredictReport()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_outputs(out_dir, PREDICT_OUTPUTS)
    for path in paths:
        try:
            image = detector.to_tensor(path)
        except Exception as e:  # any unreadable image is reported, the rest still processed
            report.skip(path, e)
            continue
        (det,) = detector.predict(image, score_thresh)
        report.add(path, det, detector.category_ids)
        if (hint := detector.tile_hint(image.shape[-2:])) is not None:
            report.notes.append(f"{path}: {hint}")
        if out_dir is not None:
            drawn = draw_detections(image, det["boxes"], det["labels"].tolist(), det["scores"].tolist(),
                                    detector.class_names, draw_min_size)
            with atomic_file(out_dir / f"{path.stem}_pred.png") as f:
                drawn.save(f, format="PNG")
    if out_dir is not None:
        report.write(out_dir)
    return report
