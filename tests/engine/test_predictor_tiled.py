"""Tiled prediction end to end with a PyTorch checkpoint: ``Detector.predict_tiled`` (the pipeline's
:meth:`~harnet.deploy.predictor.Predictor.predict_tiled` around the torch runtime). The grid, the cut-box
rule and the merge are tested in numpy in tests/deploy/test_tiling.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harnet import Detector
from harnet.deploy.tiling import WindowDetections, merge_windows, window_grid
from harnet.engine import checkpoint
from tests_support import TINY, random_checkpoint


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    path: Path = random_checkpoint(tmp_path_factory.mktemp("tiling") / "model.pt", list(TINY))
    ckpt = checkpoint.load(path)
    return Detector(checkpoint.build_model(ckpt), ckpt["class_names"], ckpt["category_ids"], device="cpu")


def _windows(detector: Detector, image: torch.Tensor, tile: int, overlap: float) -> list[WindowDetections]:
    """Each window of the grid predicted alone, in raster pixels."""
    h, w = image.shape[-2:]
    parts = []
    for window in window_grid(w, h, tile, overlap).windows():
        crop = image[:, window.y : window.y + window.height, window.x : window.x + window.width]
        (out,) = detector.predict(crop)
        parts.append(WindowDetections.from_window(window, out["boxes"].numpy(), out["scores"].numpy(),
                                                  out["labels"].numpy(), w, h))
    return parts


def test_overlap_zero_reproduces_per_window_prediction(tiny_detector: Detector) -> None:
    torch.manual_seed(0)
    image = torch.rand(3, 128, 192)
    tiled = tiny_detector.predict_tiled(image, tile=64, overlap=0.0)
    parts = _windows(tiny_detector, image, 64, 0.0)
    assert len(parts) == 6
    boxes = torch.cat([torch.from_numpy(p.boxes) for p in parts])
    got = tiled["boxes"]
    assert len(got) == len(boxes) > 0
    gap = (got[:, None, :] - boxes[None, :, :]).abs().amax(dim=2)
    assert float(gap.min(dim=1).values.max()) < 1e-2 and float(gap.min(dim=0).values.max()) < 1e-2


def test_overlapping_windows_are_merged_as_the_windows_predicted_alone(tiny_detector: Detector) -> None:
    """With overlap, the tiled result is merge_windows over each window predicted alone: the pipeline adds
    nothing of its own between the network and the merge."""
    torch.manual_seed(1)
    image = torch.rand(3, 128, 160)
    tiled = tiny_detector.predict_tiled(image, tile=64, overlap=0.5)
    grid = window_grid(160, 128, 64, 0.5)
    expected = merge_windows(_windows(tiny_detector, image, 64, 0.5), grid, tiny_detector.model.config.inference)
    assert len(tiled["scores"]) == len(expected.scores) > 0
    torch.testing.assert_close(tiled["scores"], torch.from_numpy(expected.scores), rtol=0, atol=1e-5)
    # Batched and single windows differ by float rounding, which may swap boxes of (nearly) equal scores.
    gap = (tiled["boxes"][:, None, :] - torch.from_numpy(expected.boxes)[None, :, :]).abs().amax(dim=2)
    assert float(gap.min(dim=1).values.max()) < 1e-2 and float(gap.min(dim=0).values.max()) < 1e-2


def test_image_smaller_than_a_window_keeps_the_scale(tiny_detector: Detector) -> None:
    image = torch.rand(3, 40, 50)
    result = tiny_detector.predict_tiled(image, tile=64, overlap=0.25)
    boxes = result["boxes"]
    assert bool((boxes[:, 2] <= 50).all() and (boxes[:, 3] <= 40).all())
    padded = torch.zeros(3, 64, 64)
    padded[:, :40, :50] = image
    (out,) = tiny_detector.predict(padded)
    assert len(out["boxes"]) >= len(boxes)


def test_tile_below_the_minimum_is_refused(tiny_detector: Detector) -> None:
    with pytest.raises(ValueError, match="minimum window"):
        tiny_detector.predict_tiled(torch.rand(3, 64, 64), tile=8)
    with pytest.raises(ValueError, match="at most 0.75"):
        tiny_detector.predict_tiled(torch.rand(3, 64, 64), tile=64, overlap=0.9)
