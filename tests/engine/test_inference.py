"""``evaluate_checkpoint`` (``harnet eval``): overrides change the data and the test-time settings, or are refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from harnet.config.io import ConfigError
from harnet.engine.inference import evaluate_checkpoint


@pytest.mark.slow
def test_test_time_overrides_reach_the_model(trained_run: Path, tmp_path: Path) -> None:
    """``--set model.inference.*`` is applied to the checkpoint's model (it was once silently ignored,
    so a Soft-NMS re-scoring measured hard NMS again)."""
    # The tiny run's scores sit near the prior (0.01): without the thresholds it would detect nothing.
    lenient = ["model.inference.score_thresh=0.0", "model.inference.final_score_thresh=0.0"]
    report = evaluate_checkpoint(trained_run, overrides=[*lenient, "model.inference.detections_per_img=1"],
                                 device="cpu", out=tmp_path / "one")
    per_image = Counter(d["image_id"] for d in json.loads((report.out / "detections.json").read_text()))
    assert per_image and max(per_image.values()) == 1


@pytest.mark.parametrize(("override", "message"), [
    ("model.fpn.channels=8", "model.fpn: fixed by the checkpoint's weights"),
    ("train.lr=0.1", "train: not used by an evaluation"),
])
def test_overrides_an_evaluation_cannot_apply_are_refused(trained_run: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate_checkpoint(trained_run, overrides=[override], device="cpu")


def test_predict_dataset_tiled_matches_whole_images_when_one_window_covers_them(
    shapes_root: Path, tmp_path: Path
) -> None:
    from harnet.config.experiment import load_experiment
    from harnet.data.build import build_dataset
    from harnet.engine import checkpoint
    from harnet.engine.inference import predict_dataset
    from tests_support import TINY, random_checkpoint

    path = random_checkpoint(tmp_path / "m.pt", list(TINY))
    model = checkpoint.build_model(checkpoint.load(path))
    cfg = load_experiment(None, [*TINY, f"data.shapes={{root: {shapes_root}, num_images: 20, size: 64}}"])
    dataset = torch.utils.data.Subset(build_dataset(cfg.data, "val"), [0, 1])
    ids, whole = predict_dataset(model, dataset, torch.device("cpu"))
    tiled_ids, tiled = predict_dataset(model, dataset, torch.device("cpu"), tile=64)
    assert ids == tiled_ids
    for a, b in zip(whole, tiled):
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)


def test_a_report_is_written_before_metrics_json_with_what_it_needs(trained_run: Path, tmp_path: Path) -> None:
    """``report`` runs while metrics.json is not there yet (it marks a complete set of outputs), and gets the
    ground truth, the detections, the image files and a description of the run."""
    seen = {}

    def report(evaluation: Any) -> None:
        seen["metrics"] = (evaluation.out / "metrics.json").exists()
        seen["evaluation"] = evaluation

    result = evaluate_checkpoint(trained_run, device="cpu", out=tmp_path, report=report)
    assert seen["metrics"] is False and (tmp_path / "metrics.json").is_file()
    evaluation = seen["evaluation"]
    assert evaluation is result
    assert json.loads((tmp_path / "detections.json").read_text()) == evaluation.detections
    assert sorted(evaluation.image_ids) == sorted(im["id"] for im in evaluation.ground_truth["images"])
    assert all(evaluation.image_paths[i].is_file() for i in evaluation.image_ids)
    assert evaluation.class_names[0] == "circle" and len(evaluation.category_ids) == 6
    run = evaluation.run
    assert run["step"] == 4 and run["checkpoint"].endswith("best.pt") and run["split"] == "val"
    assert run["model"]["preset"] == "hybrid" and run["model"]["backbone"] == "resnet18"
    assert run["config_version"] == run["saved_config_version"]
