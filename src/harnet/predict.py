"""``harnet predict``: detections for files, folders or globs, written as JSON and annotated PNGs."""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes

from harnet.atomic import atomic_file, write_text_atomic
from harnet.data.issues import one_line
from harnet.detector import Detector
from harnet.runfolder import remove_outputs

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# What predict_files writes into its output folder, and replaces as a set when it writes there again.
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted), globs expanded. Missing -> error."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            paths += sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
        else:
            raise FileNotFoundError(f"{item}: no such file, folder or matching glob")
    return paths


@dataclass
class PredictReport:
    detections: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def predict_files(
    detector: Detector, paths: list[Path], out_dir: Path | None, score_thresh: float
) -> PredictReport:
    """Run the detector on each file; unreadable files are listed in ``skipped``, not fatal.

    With ``out_dir``, the outputs of an earlier call there (:data:`PREDICT_OUTPUTS`) are deleted first, so the
    folder never mixes two calls' pictures; every file is written atomically, detections.json last.
    """
    report = PredictReport()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_outputs(out_dir, PREDICT_OUTPUTS)
    for path in paths:
        try:
            image = detector.to_tensor(path)
        except Exception as e:  # any unreadable image is reported, the rest still processed
            message = one_line(e)
            report.skipped.append(message if str(path) in message else f"{path}: {message}")
            continue
        (det,) = detector.predict(image, score_thresh)
        report.images.append(str(path))
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), det["names"]):
            x0, y0, x1, y1 = box
            report.detections.append({
                "file_name": str(path), "category_id": detector.category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })
        if out_dir is not None:
            drawn = (image * 255).round().to(torch.uint8)
            if len(det["boxes"]):
                labels = [f"{n} {s:.2f}" for n, s in zip(det["names"], det["scores"].tolist())]
                drawn = draw_bounding_boxes(drawn, det["boxes"], labels=labels, colors="red", width=2)
            with atomic_file(out_dir / f"{path.stem}_pred.png") as f:
                to_pil_image(drawn).save(f, format="PNG")
    if out_dir is not None:
        if report.skipped:
            write_text_atomic("\n".join(report.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(report.detections, indent=1), out_dir / "detections.json")
    return report
