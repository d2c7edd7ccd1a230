"""An exported HAR-Net on a device: numpy pre-processing, the network in onnxruntime or OpenVINO,
numpy post-processing, and ``harnet predict``'s outputs (``detections.json``, annotated PNGs).

Nothing here imports torch: the device needs numpy, pillow, the runtime and this package
(``pip install --no-deps harnet``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harnet.deploy.anchors import anchors_per_level, grid_anchors, level_shapes
from harnet.deploy.draw import DRAW_MIN_SIZE, draw_detections
from harnet.deploy.metadata import ExportInfo, load_export_info
from harnet.deploy.postprocess import detections
from harnet.deploy.preprocess import Batch, preprocess, to_input_pixels
from harnet.deploy.runtime import Backend, Runtime, open_runtime
from harnet.utils.atomic import atomic_file, write_text_atomic
from harnet.utils.errors import one_line
from harnet.utils.image_decode import _decode, open_image

# What predict_files writes into its output folder, as harnet predict does.
PREDICT_OUTPUTS = ("*_pred.png", "detections.json", "skipped.txt")


def load_image(path: str | Path) -> np.ndarray:
    """An image file as float32 CHW RGB in [0, 1], decoded exactly as the datasets and ``harnet predict`` do."""
    with open_image(path) as image:
        return np.ascontiguousarray(_decode(image, path).transpose(2, 0, 1))


def postprocess_raw(cls_logits: np.ndarray, box_deltas: np.ndarray, batch: Batch,
                    info: ExportInfo) -> list[dict[str, np.ndarray]]:
    """The network's outputs for ``batch`` -> per image ``boxes`` (input-image pixels), ``scores``, ``labels``."""
    config = info.config
    height, width = batch.images.shape[-2:]
    shapes = level_shapes(height, width)
    per_level = anchors_per_level(shapes, config.anchors.num_anchors)
    n = batch.images.shape[0]
    if cls_logits.shape[:2] != (n, sum(per_level)) or box_deltas.shape[:2] != (n, sum(per_level)):
        raise ValueError(f"outputs {cls_logits.shape} / {box_deltas.shape} do not fit a {n}x3x{height}x{width} batch "
                         f"(expected {sum(per_level)} anchors)")
    anchors = grid_anchors(config.anchors, (height, width))
    out = []
    for logits, deltas, resized, original in zip(cls_logits, box_deltas, batch.image_sizes, batch.original_sizes):
        det = detections(logits, deltas, anchors, per_level, resized, config.inference)
        det["boxes"] = to_input_pixels(det["boxes"], resized, original)
        out.append(det)
    return out


class DeployedDetector:
    """``DeployedDetector("model.onnx").predict([image])`` -> ``[{"boxes", "scores", "labels", "names"}]``.

    ``model``: an exported ``.onnx`` file or an OpenVINO IR (``.xml`` or its folder) with its
    ``.json`` metadata beside it. Images are float CHW RGB arrays in [0, 1] or file paths.
    """

    def __init__(self, model: str | Path, backend: Backend = "auto", threads: int | None = None,
                 runtime: Runtime | None = None) -> None:
        self.info = load_export_info(model)
        self.runtime = runtime if runtime is not None else open_runtime(model, backend, threads)
        self.class_names = self.info.class_names
        self.category_ids = self.info.category_ids

    def predict(self, images: Sequence[np.ndarray | str | Path], score_thresh: float = 0.0) -> list[dict[str, Any]]:
        """One image at a time (each at its own padded size, as ``harnet predict``)."""
        results = []
        for item in images:
            image = load_image(item) if isinstance(item, (str, Path)) else np.asarray(item, dtype=np.float32)
            batch = preprocess([image], self.info.config.transform)
            logits, deltas = self.runtime.run(batch.images)
            (det,) = postprocess_raw(logits, deltas, batch, self.info)
            keep = det["scores"] >= score_thresh
            kept: dict[str, Any] = {k: v[keep] for k, v in det.items()}
            kept["names"] = [self.class_names[int(i)] for i in kept["labels"]]
            results.append(kept)
        return results


@dataclass
class PredictReport:
    detections: list[dict[str, Any]] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path: reason"


def predict_files(detector: DeployedDetector, paths: list[Path], out_dir: Path | None, score_thresh: float,
                  draw: bool = True, draw_min_size: int = DRAW_MIN_SIZE) -> PredictReport:
    """``harnet predict``'s file loop: unreadable files are listed in ``skipped``; with ``out_dir``, an
    earlier call's outputs there are removed first, each image is drawn, and ``detections.json``
    (``harnet predict``'s format) is written last, every file atomically."""
    report = PredictReport()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for pattern in PREDICT_OUTPUTS:
            for old in out_dir.glob(pattern):
                old.unlink()
    for path in paths:
        try:
            image = load_image(path)
        except Exception as e:  # any unreadable image is reported, the rest still processed
            message = one_line(e)
            report.skipped.append(message if str(path) in message else f"{path}: {message}")
            continue
        (det,) = detector.predict([image], score_thresh)
        report.images.append(str(path))
        for box, score, label, name in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                           det["names"]):
            x0, y0, x1, y1 = box
            report.detections.append({
                "file_name": str(path), "category_id": detector.category_ids[label], "category_name": name,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score,
            })
        if out_dir is not None and draw:
            picture = draw_detections(image, det["boxes"], det["labels"].tolist(), det["scores"].tolist(),
                                      detector.class_names, draw_min_size)
            with atomic_file(out_dir / f"{path.stem}_pred.png") as f:
                picture.save(f, format="PNG")
    if out_dir is not None:
        if report.skipped:
            write_text_atomic("\n".join(report.skipped) + "\n", out_dir / "skipped.txt")
        write_text_atomic(json.dumps(report.detections, indent=1), out_dir / "detections.json")
    return report
