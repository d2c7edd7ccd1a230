"""``evaluate_checkpoint`` (``harnet eval``): overrides change the data and the test-time settings, or are refused."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

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
