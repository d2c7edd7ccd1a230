"""Pre-annotation writers: scores where each format keeps them, ``harnet predict --format``, harnet reading them."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from harnet.data.coco import CocoDataset
from harnet.data.cvat import CvatDataset
from harnet.data.labelstudio import LabelStudioDataset
from harnet.data.yolo import YoloDataset
from harnet.deploy.annotation_formats import (
    PREDICTION_FILES,
    AnnotatedImage,
    image_names,
    write_annotations,
    write_yolo,
)
from harnet.deploy.predictor import load_image
from harnet.deploy.run import predict_inputs, sort_inputs
from harnet.tools.cli import main
from harnet.utils.errors import UsageError
from tests_support import TINY, random_checkpoint

CLASSES = ["cat", "dog"]
# Boxes survive to 0.01 px (3 decimals in COCO and CVAT, full floats in Label Studio, 8 digits in YOLO).
TOLERANCE = 0.01


def _predicted(tmp_path: Path) -> list[AnnotatedImage]:
    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    Image.new("RGB", (30, 40)).save(tmp_path / "b.png")
    return [AnnotatedImage("a.png", 200, 100, np.array([[10.25, 20.5, 60.125, 90.0], [0, 0, 200, 100]]),
                           np.array([1, 0]), np.array([0.875, 0.25]), path=tmp_path / "a.png"),
            AnnotatedImage("b.png", 30, 40, np.zeros((0, 4)), np.zeros(0), np.zeros(0), path=tmp_path / "b.png")]


def _read(fmt: str, written: Path, images: Path) -> Any:
    """harnet's dataset of a written file. Label Studio predictions are what a labeller accepts in the tool,
    which turns each into an annotation with the same result: done here to the file, as harnet trains on
    annotations only."""
    if fmt == "coco":
        return CocoDataset(images, written)
    if fmt == "labelstudio":
        tasks = json.loads(written.read_text())
        accepted = written.with_name("accepted.json")
        accepted.write_text(json.dumps([{"data": t["data"], "annotations": t["predictions"]} for t in tasks]))
        return LabelStudioDataset(accepted, images)
    if fmt == "cvat":
        return CvatDataset(written, images)
    return YoloDataset(written, "val")


def test_predictions_keep_their_scores(tmp_path: Path) -> None:
    images = _predicted(tmp_path)
    out = {fmt: write_annotations(fmt, images, CLASSES, tmp_path / "out" / name)
           for fmt, name in PREDICTION_FILES.items()}
    coco = json.loads(out["coco"].read_text())
    assert [a["score"] for a in coco["annotations"]] == [0.875, 0.25]
    assert [a["category_id"] for a in coco["annotations"]] == [2, 1] and coco["categories"][1]["name"] == "dog"
    tasks = json.loads(out["labelstudio"].read_text())
    assert "annotations" not in tasks[0] and tasks[0]["predictions"][0]["score"] == pytest.approx(0.5625)
    result = tasks[0]["predictions"][0]["result"][0]
    assert result["score"] == 0.875 and result["value"]["rectanglelabels"] == ["dog"]
    assert result["value"]["x"] == pytest.approx(5.125) and result["value"]["height"] == pytest.approx(69.5)
    assert tasks[1]["predictions"][0]["result"] == [] and tasks[1]["data"]["image"] == "b.png"
    box = ET.parse(out["cvat"]).getroot().find("image/box")
    assert box is not None and box.get("source") == "auto" and box.findtext("attribute[@name='score']") == "0.8750"
    first = (out["yolo"].parent / "labels" / "a.txt").read_text().splitlines()[0]
    assert first == "1 0.1759375 0.5525 0.249375 0.695 0.875"  # class cx cy w h conf
    assert (out["yolo"].parent / "labels" / "b.txt").read_text() == ""
    for fmt, written in out.items():  # harnet reads its own pre-annotations back
        back = _read(fmt, written, tmp_path)
        assert len(back) == 2 and back.class_names == CLASSES
        torch.testing.assert_close(back.records[0].boxes.double(), torch.from_numpy(images[0].boxes),
                                   atol=TOLERANCE, rtol=0)


def test_ground_truth_has_no_scores(tmp_path: Path) -> None:
    images = _predicted(tmp_path)
    for image in images:
        image.scores = None
    ls = json.loads(write_annotations("labelstudio", images, CLASSES, tmp_path / "ls.json").read_text())
    assert "predictions" not in ls[0] and "score" not in ls[0]["annotations"][0]["result"][0]
    box = ET.parse(write_annotations("cvat", images, CLASSES, tmp_path / "c.xml")).getroot().find("image/box")
    assert box is not None and box.get("source") == "manual" and box.find("attribute") is None
    write_annotations("yolo", images, CLASSES, tmp_path / "y")
    assert len((tmp_path / "y" / "labels" / "a.txt").read_text().split("\n")[0].split()) == 5


def test_refused_mixes(tmp_path: Path) -> None:
    images = _predicted(tmp_path)
    images[1].scores = None
    with pytest.raises(ValueError, match="some images have scores and others not"):
        write_annotations("coco", images, CLASSES, tmp_path / "c.json")
    twins = [AnnotatedImage(n, 10, 10, np.zeros((0, 4)), np.zeros(0)) for n in ("x.png", "x.jpg")]
    with pytest.raises(ValueError, match="x.png and x.jpg would share the YOLO label file labels/x.txt"):
        write_yolo(twins, CLASSES, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_image_names_relative_to_the_common_folder(tmp_path: Path) -> None:
    assert image_names([tmp_path / "a.png", tmp_path / "b.png"]) == ["a.png", "b.png"]
    assert image_names([tmp_path / "x" / "a.png", tmp_path / "y" / "a.png"]) == ["x/a.png", "y/a.png"]


class FakePredictor:
    """Two detections per image, at fixed fractions of its size: prediction without a network."""

    class_names = CLASSES
    category_ids = (3, 7)

    def predict(self, images: list[np.ndarray], score_thresh: float) -> list[dict[str, Any]]:
        height, width = images[0].shape[-2:]
        boxes = np.array([[0.1 * width, 0.2 * height, 0.5 * width, 0.9 * height], [1.5, 2.5, 7.75, 9.0]], np.float32)
        return [{"boxes": boxes, "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([0, 1]),
                 "names": ["cat", "dog"]}]

    def tile_hint(self, size: Any) -> None:
        return None

    def load_image(self, path: Path) -> np.ndarray:
        return load_image(path)

    def display(self, image: np.ndarray) -> np.ndarray:
        return image


def test_predict_inputs_writes_every_format_before_detections(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(tmp_path / "in" / "a.png")
    Image.new("RGB", (33, 21)).save(tmp_path / "in" / "sub" / "b.jpg")
    inputs = sort_inputs([str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "sub" / "b.jpg")],
                         formats=list(PREDICTION_FILES))
    out = tmp_path / "out"
    run = predict_inputs(FakePredictor(), inputs, out, 0.0, formats=list(PREDICTION_FILES))  # type: ignore[arg-type]
    assert not run.report.skipped
    detections = json.loads((out / "detections.json").read_text())
    for fmt, name in PREDICTION_FILES.items():
        written = out / name / "data.yaml" if fmt == "yolo" else out / name
        assert written.stat().st_mtime_ns <= (out / "detections.json").stat().st_mtime_ns
        back = _read(fmt, written, tmp_path / "in")
        by_file = {r.path.resolve(): r for r in back.records}
        for d in detections:
            record = by_file[Path(d["file_name"]).resolve()]
            x, y, w, h = d["bbox"]
            assert any(torch.allclose(b.double(), torch.tensor([x, y, x + w, y + h], dtype=torch.float64),
                                      atol=TOLERANCE, rtol=0) for b in record.boxes)
    assert json.loads((out / PREDICTION_FILES["coco"]).read_text())["categories"][1]["id"] == 7
    assert (out / PREDICTION_FILES["yolo"] / "labels" / "sub" / "b.txt").is_file()
    # A later call without --format leaves no stale pre-annotations behind.
    predict_inputs(FakePredictor(), inputs, out, 0.0)  # type: ignore[arg-type]
    assert not any((out / name).exists() for name in PREDICTION_FILES.values())


def test_format_needs_images(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--format writes pre-annotations of images and rasters, not of video"):
        sort_inputs(["clip.mp4"], formats=["yolo"])


def test_cli_predict_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = random_checkpoint(tmp_path / "model.pt", list(TINY))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "pred"
    assert main(["predict", str(model), str(tmp_path / "x.png"), "--score", "0", "--out", str(out),
                 "--format", "yolo", "--format", "labelstudio", "--format", "yolo"]) == 0
    assert "yolo pre-annotations: " in capsys.readouterr().out
    detections = json.loads((out / "detections.json").read_text())
    lines = (out / PREDICTION_FILES["yolo"] / "labels" / "x.txt").read_text().splitlines()
    assert len(lines) == len(detections) > 0
    assert [float(line.split()[5]) for line in lines] == pytest.approx([d["score"] for d in detections], abs=1e-6)
    task = json.loads((out / PREDICTION_FILES["labelstudio"]).read_text())[0]
    assert len(task["predictions"][0]["result"]) == len(detections)
    with pytest.raises(SystemExit, match="2"):
        main(["predict", str(model), str(tmp_path / "x.png"), "--format", "pascal"])
