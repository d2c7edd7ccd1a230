"""Explain: figures and summary are written, masks lie in [0, 1] over the image, the sampling points
are finite and read in torchvision's offset layout, and presets without an attention skip its figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.ops import deform_conv2d

from harnet.tools.cli import main
from harnet.tools.explain import LEVEL_NAMES, explain_file, sampling_positions
from tests_support import TINY, random_checkpoint


def test_sampling_positions_follow_torchvision_offset_layout() -> None:
    """A deformable conv with a one-hot kernel at tap k over x/y ramps outputs exactly the (x, y)
    where tap k samples (bilinear sampling of a linear ramp is exact inside the image)."""
    groups, h, w = 2, 7, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ramps = torch.stack([xs, ys] * groups)[None]  # channels per offset group: (x, y)
    offsets = torch.randn(1, 2 * groups * 9, h, w, generator=torch.Generator().manual_seed(0)) * 0.4
    learned, regular = sampling_positions(offsets[0], 3, 4)
    assert learned.shape == (groups, 9, 2) and regular.shape == (9, 2)
    torch.testing.assert_close(regular[4], torch.tensor([4.0, 3.0]))  # centre tap = the cell itself
    for k in range(9):
        weight = torch.zeros(2 * groups, 2 * groups, 3, 3)
        for c in range(2 * groups):
            weight[c, c, k // 3, k % 3] = 1
        sampled = deform_conv2d(ramps, offsets, weight, padding=1)[0, :, 3, 4].reshape(groups, 2)
        torch.testing.assert_close(sampled, learned[:, k], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "image.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(70, 90, 3, generator=g) * 255).byte().numpy()).save(path)
    return path


@pytest.mark.slow
def test_hybrid_explanation_files_and_values(tmp_path: Path, image_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "hybrid.pt", [*TINY, "model.num_classes=3", "model.aligned.stages=[c4, c5]"])
    out = tmp_path / "out"
    result, files = explain_file(ckpt, image_path, out, device="cpu")
    names = {p.name for p in files}
    expected = {f"spatial_{level}.png" for level in LEVEL_NAMES}
    expected |= {"spatial_levels.png", "aligned_c4.png", "aligned_c5.png", "se_weights.png", "summary.json"}
    assert names == expected
    assert all((out / name).stat().st_size > 0 for name in names)
    assert list(result.masks) == list(LEVEL_NAMES)
    for mask in result.masks.values():
        assert mask.shape == (70, 90)
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    for stage in ("c4", "c5"):
        points = result.sampling_points[stage]
        assert points.shape == (4, 9, 2) and bool(torch.isfinite(points).all())
        # The offsets are non-zero, so the sampling points leave the regular grid.
        assert float((points - result.grid_points[stage][None]).abs().max()) > 0
    assert set(result.se_weights) == {"classification", "box"}
    for weights in result.se_weights.values():
        assert weights.shape == (32,) and float(weights.min()) > 0 and float(weights.max()) < 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [] and set(summary["spatial_masks"]) == set(LEVEL_NAMES)
    assert "prediction set 2" in summary["se_weights"]["classification"]["applies_to"]


def test_retinanet_skips_every_attention_figure(tmp_path: Path, image_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = random_checkpoint(tmp_path / "retina.pt", [*TINY, "model.num_classes=3", "model.preset=retinanet"])
    out = tmp_path / "out"
    assert main(["explain", str(ckpt), str(image_path), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["skipped"]) == 3
    assert capsys.readouterr().out.count("skipped") == 3


def test_point_outside_the_image_is_a_usage_error(tmp_path: Path, image_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = random_checkpoint(tmp_path / "aligned.pt", [*TINY, "model.num_classes=3", "model.preset=aligned"])
    assert main(["explain", str(ckpt), str(image_path), "--out", str(tmp_path / "o"), "--point", "500", "5"]) == 2
    err = capsys.readouterr().err
    assert "outside the 90x70 image" in err and len(err.strip().splitlines()) == 1
