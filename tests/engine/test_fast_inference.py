"""A detector loaded for inference (folded norms, channels_last) predicts what the plain model does."""

from __future__ import annotations

from pathlib import Path

import torch

from harnet import Detector

TOL = 1e-3  # boxes in pixels and scores, after float rounding in folded convs and the sampled deformable conv


def test_optimized_detector_equals_plain(trained_run: Path, shapes_root: Path) -> None:
    paths = sorted((shapes_root / "val").glob("*.png"))[:2]
    fast = Detector.from_checkpoint(trained_run, device="cpu")
    plain = Detector.from_checkpoint(trained_run, device="cpu", optimize=False)
    assert any(p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4 for p in fast.model.parameters())
    for got, expected in zip(fast.predict(paths), plain.predict(paths)):
        assert got["labels"].tolist() == expected["labels"].tolist()
        torch.testing.assert_close(got["scores"], expected["scores"], atol=TOL, rtol=0)
        torch.testing.assert_close(got["boxes"], expected["boxes"], atol=TOL * 100, rtol=0)
