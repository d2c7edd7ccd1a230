"""``harnet predict``: detections for files, folders or globs, written as JSON and annotated PNGs."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.v2.functional import to_pil_image

from harnet.engine.predictor import Detector
from harnet.engine.runfolder import remove_outputs
from harnet.utils.atomic import atomic_file, write_text_atomic
from harnet.utils.errors import one_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
# What predict_files writes into its output folder, and replaces as a set when it writes there again.
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt")
# matplotlib's tab10: distinct colours, one per class (cycled beyond ten classes).
CLASS_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
DRAW_MIN_SIZE = 512


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def draw_detections(
    image: Tensor, boxes: Tensor, labels: Sequence[int], scores: Sequence[float], class_names: Sequence[str],
    min_size: int = DRAW_MIN_SIZE,
) -> Image.Image:
    """The image with its detections drawn, readable at a glance.

    ``image`` is a float CHW tensor in [0, 1] and ``boxes`` (n, 4) XYXY in its pixels. An image whose
    short side is under ``min_size`` is upscaled (bilinear) to that size first, and line width and font
    size follow the drawing's size, so a 128 px image still gets legible labels. Each class has its own
    colour; the label "name score" sits on a filled tag above its box (inside it at the top edge), and
    higher-scoring boxes are drawn last, on top."""
    picture = to_pil_image((image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()).convert("RGB")
    scale = max(1.0, min_size / max(1, min(picture.size)))
    if scale > 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.Resampling.BILINEAR)
    short = min(picture.size)
    width, font = max(2, round(short / 200)), _font(max(12, round(short / 28)))
    draw = ImageDraw.Draw(picture)
    for k in sorted(range(len(labels)), key=lambda i: float(scores[i])):
        x0, y0, x1, y1 = (float(v) * scale for v in boxes[k].tolist())
        label = int(labels[k])
        color = CLASS_COLORS[label % len(CLASS_COLORS)]
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        text = f"{class_names[label]} {float(scores[k]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = max(1, width // 2)
        tag_h = bottom - top + 2 * pad
        ty = y0 - tag_h if y0 - tag_h >= 0 else y0
        draw.rectangle((x0, ty, x0 + right - left + 2 * pad, ty + tag_h), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((x0 + pad - left, ty + pad - top), text, font=font,
                  fill=(0, 0, 0) if luminance > 150 else (255, 255, 255))
    return picture


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
    notes: list[str] = field(default_factory=list)  # "path: advice" (e.g. use --tile)


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
            message = one_line(e)
            report.skipped.append(message if str(path) in message else f"{path}: {message}")
            continue
        (det,) = detector.predict(image, score_thresh)
        report.images.append(str(path))
        if (hint := detector.tile_hint(image.shape[-2:])) is not None:
            report.notes.append(f"{path}: {hint}")
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), det["names"]):
            x0, y0, x1, y1 = box
            report.detections.append({
                "file_name": str(path), "category_id": detector.category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })
        if out_dir is not None:
            drawn = draw_detections(image, det["boxes"], det["labels"].tolist(), det["scores"].tolist(),
                                    detector.class_names, draw_min_size)
            with atomic_file(out_dir / f"{path.stem}_pred.png") as f:
                drawn.save(f, format="PNG")
    if out_dir is not None:
        if report.skipped:
            write_text_atomic("\n".join(report.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(report.detections, indent=1), out_dir / "detections.json")
    return report
