"""Explain: figures and summary are written, masks lie in [0, 1] over the image, the sampling points
are finite and read in torchvision's offset layout, and presets without an attention skip its figure.
The read-outs are the model's own (``HARNet.attention_maps``): the same geometry and detections as
``model(images)``, and the same values forward hooks on the attention modules see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.ops import deform_conv2d

from harnet.engine import checkpoint
from harnet.modeling.harnet import HARNet
from harnet.modeling.pyramid import level_shapes
from harnet.tools.cli import main
from harnet.tools.explain import LEVEL_NAMES, _mask_to_image, explain_file, explain_image, sampling_positions
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


def _model(path: Path, *overrides: str) -> HARNet:
    return checkpoint.build_model(checkpoint.load(random_checkpoint(path, [*TINY, "model.num_classes=3",
                                                                           *overrides]))).eval()


def test_explain_uses_the_test_geometry_of_forward(tmp_path: Path) -> None:
    """With test sizes unlike the training ones (as the COCO configs set them), explain maps masks and
    sampling points with the sizes ``forward`` ran at, and reports ``forward``'s detections."""
    model = _model(tmp_path / "m.pt", "model.transform={min_size: [64], max_size: 64, test_min_size: 80, "
                                       "test_max_size: 96}")
    assert model.head.spatial is not None
    with torch.no_grad():  # masks with contrast (at initialisation they are 0.5 everywhere)
        for module in model.head.spatial.levels.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(std=0.3, generator=torch.Generator().manual_seed(2))
    image = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(0))
    image_list, _ = model.preprocess([image])
    assert image_list.image_sizes == [(74, 96)]  # test sizes; training would give (49, 64)
    padded = (int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1]))
    with torch.no_grad():
        (expected,) = model([image])
        maps = model.attention_maps([image])
    assert maps.image_sizes == image_list.image_sizes and maps.padded_size == padded
    assert maps.original_sizes == [(70, 90)]
    assert [tuple(m.shape[-2:]) for m in maps.spatial] == level_shapes(*padded)
    result = explain_image(model, image)
    assert len(expected["scores"]) > 0
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(maps.detections[0][key], expected[key], rtol=0, atol=0)
        torch.testing.assert_close(result.detections[key], expected[key], rtol=0, atol=0)
    assert list(result.mask_shapes.values()) == level_shapes(*padded)
    # Each mask is cropped to forward's resized image inside forward's padded batch, then scaled to the
    # input: with the training sizes (padded 64x64, resized 49x64) the crop, and so the map, differ.
    for name, mask in zip(LEVEL_NAMES, maps.spatial):
        torch.testing.assert_close(result.masks[name], _mask_to_image(mask[:1], padded, (74, 96), (70, 90)))
    p3 = maps.spatial[0][:1]
    assert float(p3.max() - p3.min()) > 0.05
    assert not torch.allclose(result.masks["P3"], _mask_to_image(p3, (64, 64), (49, 64), (70, 90)), atol=1e-3)
    # The centre tap of the regular grid at the location is that cell's centre, in input pixels: the
    # cell holding the point, so the point lies within half a cell (in input pixels) of it.
    assert result.location is not None
    for stage, stride in (("c5", 32),):
        centre = result.grid_points[stage][4]
        cell = torch.tensor([stride * 90 / 96, stride * 70 / 74])
        assert bool(((centre - torch.tensor(result.location)).abs() <= cell / 2 + 1e-4).all())


@pytest.mark.parametrize("preset", ["hybrid", "channel"])
def test_read_outs_equal_what_forward_hooks_capture(tmp_path: Path, preset: str) -> None:
    """The read-outs are the values the attention modules compute in the pass: what forward hooks on the
    spatial mask nets, the offset convs and the SE MLPs (the way explain read them before) capture."""
    extra = [] if preset == "hybrid" else ["model.preset=channel", "model.spatial.enabled=true",
                                           "model.aligned.enabled=true"]
    model = _model(tmp_path / "m.pt", "model.aligned.stages=[c4, c5]", *extra)
    assert (model.head.set2 is not None) == (preset == "hybrid")
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):  # type: ignore[no-untyped-def]
        def hook(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
            captured[name] = output.detach().clone()

        return hook

    head = model.head
    assert head.spatial is not None and head.cls_se is not None and head.box_se is not None
    hooks = [net.register_forward_hook(keep(f"spatial/{i}")) for i, net in enumerate(head.spatial.levels)]
    hooks += [block.offset.register_forward_hook(keep(f"offset/{stage}")) for stage, block in model.aligned.items()]
    hooks += [head.cls_se.fc.register_forward_hook(keep("se/classification")),
              head.box_se.fc.register_forward_hook(keep("se/box"))]
    images = [torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(1)), torch.rand(3, 60, 64)]
    try:
        with torch.no_grad():
            maps = model.attention_maps(images)
    finally:
        for handle in hooks:
            handle.remove()
    assert len(maps.spatial) == len(LEVEL_NAMES)
    for i, mask in enumerate(maps.spatial):
        torch.testing.assert_close(mask, captured[f"spatial/{i}"].sigmoid(), rtol=0, atol=0)
    assert list(maps.offsets) == ["c4", "c5"]
    for stage, offsets in maps.offsets.items():
        torch.testing.assert_close(offsets, captured[f"offset/{stage}"], rtol=0, atol=0)
    assert set(maps.channel) == {"classification", "box"}
    for branch, weights in maps.channel.items():
        assert weights.shape == (2, 32)
        torch.testing.assert_close(weights, captured[f"se/{branch}"].sigmoid(), rtol=0, atol=0)


def test_attention_maps_of_a_plain_retinanet_are_empty_and_need_eval_mode(tmp_path: Path) -> None:
    model = _model(tmp_path / "m.pt", "model.preset=retinanet")
    with torch.no_grad():
        maps = model.attention_maps([torch.rand(3, 40, 50)])
    assert maps.spatial == [] and maps.offsets == {} and maps.channel == {}
    with pytest.raises(ValueError, match="eval"):
        model.train().attention_maps([torch.rand(3, 40, 50)])
