"""``harnet predict MODEL IMAGES...``: detections for image files, written as JSON and annotated PNGs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harnet.deploy.draw import DRAW_MIN_SIZE, draw_detections
from harnet.deploy.predictor import Predictor
from harnet.deploy.report import PredictReport, output_stems
from harnet.utils.atomic import atomic_file


def predict_files(predictor: Predictor, paths: Sequence[Path], out_dir: Path | None, score_thresh: float,
                  report: PredictReport | None = None, stems: Sequence[str] | None = None, draw: bool = True,
                  draw_min_size: int = DRAW_MIN_SIZE) -> PredictReport:
    """Run ``predictor`` on each file; unreadable files are listed in ``report.skipped``, not fatal.

    With ``out_dir`` (made and cleared by the caller, :func:`harnet.deploy.run.predict_inputs`), each image
    is drawn there with its detections as ``<stem>_pred.png`` (``stems``: the names of all the call's inputs,
    :func:`~harnet.deploy.report.output_stems`), written atomically. The caller writes ``detections.json``
    once every input is done."""
    report = report if report is not None else PredictReport()
    for path, stem in zip(paths, stems or output_stems(paths)):
        try:
            image = predictor.load_image(path)
        except Exception as e:  # any unreadable image is reported, the rest still processed
            report.skip(path, e)
            continue
        (det,) = predictor.predict([image], score_thresh)
        report.add(path, det, predictor.category_ids, size=(int(image.shape[-1]), int(image.shape[-2])))
        if (hint := predictor.tile_hint(image.shape[-2:])) is not None:
            report.notes.append(f"{path}: {hint}")
        if out_dir is not None and draw:
            drawn = draw_detections(predictor.display(image), det["boxes"], det["labels"].tolist(),
                                    det["scores"].tolist(), predictor.class_names, draw_min_size)
            with atomic_file(out_dir / f"{stem}_pred.png") as f:
                drawn.save(f, format="PNG")
    return report
