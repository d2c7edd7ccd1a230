"""Every odd or broken image file, through the real dataset path (``build_dataset``), in both modes.

Strict (default): handled files load as 3-channel float images in [0, 1] of the annotated size; broken
ones stop with a one-line error naming the file (``decode_only`` ones when their pixels are read).
``skip_bad``: broken ones are skipped, listed with file and reason, and removed from the ground truth.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from badfiles import CASES_BY_NAME, HANDLED, ImageCase, box_around_middle, coco_dict, write_json, write_rgb

from harnet.config.experiment import DataConfig
from harnet.data.build import build_dataset
from harnet.data.image_io import BadImageError, image_size, load_image
from harnet.data.issues import SKIPPED_IMAGE

CASES = CASES_BY_NAME


def _dataset_with(case: ImageCase, root: Path) -> tuple[DataConfig, Path]:
    """A COCO train split of one good image (id 1) and the case's file (id 2), each with one box."""
    images = root / "images"
    good_size = write_rgb(images / "good.png")
    path = images / f"{case.name}{case.suffix}"
    width, height = case.write(path)
    ann = write_json(root / "train.json", coco_dict(
        [(1, "good.png", *good_size), (2, path.name, width, height)],
        {1: [box_around_middle(*good_size)], 2: [box_around_middle(width, height)]},
    ))
    cfg = DataConfig(format="coco", train_images=str(images), train_annotations=str(ann))
    return cfg, path


@pytest.mark.parametrize("name", list(CASES))
def test_strict(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    cfg, path = _dataset_with(case, tmp_path)
    if case.outcome == HANDLED:
        ds = build_dataset(cfg, "train")
        assert len(ds) == 2 and not ds.issues.items
        image, target = ds[1]
        record = ds.records[1]
        assert image.shape == (3, record.height, record.width) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert target["boxes"].shape == (1, 4)
        return
    if case.decode_only:  # the header is fine: found when the pixels are read
        ds = build_dataset(cfg, "train")
        with pytest.raises(BadImageError) as info:
            ds[1]
    else:
        with pytest.raises(case.error) as info:
            build_dataset(cfg, "train")
    message = str(info.value)
    assert case.outcome in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("name", list(CASES))
def test_skip_bad(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    cfg, path = _dataset_with(case, tmp_path)
    cfg.skip_bad = True
    ds = build_dataset(cfg, "train")
    if case.outcome == HANDLED:
        assert len(ds) == 2 and not ds.issues.items
        return
    assert [r.path.name for r in ds.records] == ["good.png"]
    assert sorted(ds.coco.getImgIds()) == [1] and len(ds.coco.getAnnIds()) == 1, "skipped image left the GT"
    assert ds.issues.counts() == {SKIPPED_IMAGE: 1}
    (issue,) = ds.issues.items
    assert issue.file == str(path) and case.outcome in issue.problem


def test_handled_pixels_are_right(tmp_path: Path) -> None:
    """Spot checks on values, not just shapes: EXIF rotation turns the image, alpha goes to white."""
    shapes = {}
    for name in ("exif_rotated", "rgba", "gray16", "cmyk_jpeg"):
        case = CASES[name]
        path = tmp_path / f"{name}{case.suffix}"
        size = case.write(path)
        assert image_size(path) == size
        shapes[name] = load_image(path).as_subclass(torch.Tensor)
    assert shapes["exif_rotated"].shape == (3, 48, 32)  # stored 48x32, displayed 32 wide x 48 high
    centre = shapes["cmyk_jpeg"][:, 15, 20]
    assert centre[0] > 0.8 and centre[1] < 0.3  # the red square survived CMYK -> RGB
    assert float(shapes["gray16"].max()) > 0.85  # 16-bit rescaled, not clipped to white or black
