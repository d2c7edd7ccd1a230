"""Detector: one API for files, PIL images and tensors, with class names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from harnet import Detector


def test_predict_accepts_paths_pil_and_tensors(trained_run: Path, shapes_root: Path) -> None:
    detector = Detector.from_checkpoint(trained_run)
    path = sorted((shapes_root / "val").glob("*.png"))[0]
    pil = Image.open(path)
    tensor = torch.from_numpy(np.array(pil.convert("RGB"))).permute(2, 0, 1)
    by_path = detector.predict(path)
    assert len(by_path) == 1
    batch = detector.predict([path, pil, tensor])
    assert len(batch) == 3
    for out in batch:
        torch.testing.assert_close(out["boxes"], by_path[0]["boxes"])
        assert out["names"] == [detector.class_names[i] for i in out["labels"].tolist()]
    assert set(detector.class_names) == {"circle", "square", "triangle", "star", "cross", "ring"}


def test_score_threshold_filters(trained_run: Path, shapes_root: Path) -> None:
    detector = Detector.from_checkpoint(trained_run / "last.pt")
    path = sorted((shapes_root / "val").glob("*.png"))[0]
    (all_dets,) = detector.predict(path, score_thresh=0.0)
    (high,) = detector.predict(path, score_thresh=0.5)
    assert len(high["scores"]) <= len(all_dets["scores"])
    assert bool((high["scores"] >= 0.5).all())
