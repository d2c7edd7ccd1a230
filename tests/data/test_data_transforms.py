"""build_transforms on the (image, target) structure, and collate_fn."""

from __future__ import annotations

import torch
from torchvision import tv_tensors

from harnet.data import build_transforms, collate_fn


def _sample(boxes: list[list[float]], labels: list[int]) -> tuple[tv_tensors.Image, dict]:
    image = tv_tensors.Image(torch.rand(3, 10, 20))
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes).reshape(-1, 4), format="XYXY", canvas_size=(10, 20)
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "image_id": 5,
    }
    return image, target


def test_horizontal_flip_moves_boxes_with_the_image() -> None:
    image, target = _sample([[2.0, 1.0, 6.0, 4.0]], [3])
    out_image, out = build_transforms(train=True, hflip_prob=1.0, photometric=False)(image, target)
    torch.testing.assert_close(out_image, image.flip(-1))
    assert out["boxes"].tolist() == [[14.0, 1.0, 18.0, 4.0]]  # x -> W - x
    assert out["labels"].tolist() == [3] and out["image_id"] == 5
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes)


def test_vertical_flip_moves_boxes_with_the_image() -> None:
    image, target = _sample([[2.0, 1.0, 6.0, 4.0]], [3])
    out_image, out = build_transforms(train=True, hflip_prob=0.0, photometric=False, vflip_prob=1.0)(image, target)
    torch.testing.assert_close(out_image, image.flip(-2))
    assert out["boxes"].tolist() == [[2.0, 6.0, 6.0, 9.0]]  # y -> H - y
    assert out["labels"].tolist() == [3]


def test_quarter_turn_turns_image_canvas_and_boxes_alike() -> None:
    image, target = _sample([[2.0, 1.0, 6.0, 4.0]], [3])
    out_image, out = build_transforms(train=True, hflip_prob=0.0, photometric=False, rot90_prob=1.0)(image, target)
    torch.testing.assert_close(out_image, image.rot90(1, (-2, -1)))  # counter-clockwise: (x, y) -> (y, W - x)
    assert out["boxes"].canvas_size == (20, 10)
    assert out["boxes"].tolist() == [[1.0, 14.0, 4.0, 18.0]]
    assert out["labels"].tolist() == [3]


def test_boxes_leaving_the_image_are_clamped_or_dropped_with_their_labels() -> None:
    image, target = _sample([[2.0, 1.0, 6.0, 4.0], [25.0, 2.0, 30.0, 5.0], [15.0, 2.0, 26.0, 8.0]], [0, 1, 2])
    _, out = build_transforms(train=True, hflip_prob=0.0, photometric=True)(image, target)
    assert out["labels"].tolist() == [0, 2]
    assert out["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0], [15.0, 2.0, 20.0, 8.0]]


def test_random_crop_cuts_image_and_boxes_alike_and_drops_boxes_outside_it() -> None:
    """A crop of an image whose pixels encode their own (y, x): the crop's corner is read off its first
    pixel, and every box comes out shifted by that corner and clipped to the crop, the ones outside it
    dropped with their labels."""
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(20.0), indexing="ij")
    image = tv_tensors.Image(torch.stack([ys, xs, torch.zeros_like(ys)]) / 255)
    boxes = [[0.0, 0.0, 20.0, 10.0], [1.0, 1.0, 3.0, 3.0], [17.0, 7.0, 19.0, 9.0], [6.0, 2.0, 14.0, 8.0]]
    _, target = _sample(boxes, [0, 1, 2, 3])
    corners, dropped = set(), 0
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out = build_transforms(train=True, hflip_prob=0.0, photometric=False, random_crop=6)(image, target)
        assert out_image.shape == (3, 6, 6)
        top, left = (round(float(v) * 255) for v in out_image[:2, 0, 0])
        corners.add((top, left))
        torch.testing.assert_close(out_image, image[:, top:top + 6, left:left + 6])
        expected = [([max(x0 - left, 0), max(y0 - top, 0), min(x1 - left, 6), min(y1 - top, 6)], label)
                    for (x0, y0, x1, y1), label in zip(boxes, [0, 1, 2, 3])]
        expected = [(box, label) for box, label in expected if box[2] > box[0] and box[3] > box[1]]
        assert out["boxes"].tolist() == [box for box, _ in expected]
        assert out["labels"].tolist() == [label for _, label in expected]
        dropped += len(expected) < len(boxes)
    assert len(corners) > 5 and dropped > 0  # the crop moves, and some crops miss some boxes


def test_random_crop_pads_an_image_smaller_than_the_crop() -> None:
    """The whole image (and its box) survives inside a zero-padded crop of the asked size."""
    image, target = _sample([[2.0, 1.0, 6.0, 4.0]], [1])
    image = tv_tensors.Image(image + 1)  # no zero pixel, so the padding is where the zeros are
    out_image, out = build_transforms(train=True, hflip_prob=0.0, photometric=False, random_crop=24)(image, target)
    assert out_image.shape == (3, 24, 24)
    rows, cols = out_image[0].nonzero().unbind(1)
    top, left = int(rows.min()), int(cols.min())
    torch.testing.assert_close(out_image[:, top:top + 10, left:left + 20], image)
    assert out["boxes"].tolist() == [[2.0 + left, 1.0 + top, 6.0 + left, 4.0 + top]] and out["labels"].tolist() == [1]


def test_eval_transform_keeps_everything() -> None:
    image, target = _sample([[2.0, 1.0, 6.0, 4.0]], [1])
    out_image, out = build_transforms(train=False)(image, target)
    torch.testing.assert_close(out_image, image)
    assert out["boxes"].tolist() == [[2.0, 1.0, 6.0, 4.0]] and out_image.dtype == torch.float32


def test_collate_returns_lists_of_plain_tensors() -> None:
    images, targets = collate_fn([_sample([[1.0, 1.0, 2.0, 2.0]], [0]), _sample([], [])])
    assert len(images) == 2 and len(targets) == 2
    assert all(type(image) is torch.Tensor for image in images)
    assert type(targets[0]["boxes"]) is torch.Tensor and targets[1]["boxes"].shape == (0, 4)
    assert targets[0]["labels"].dtype == torch.int64 and targets[0]["image_id"] == 5


def test_jitter_is_the_photometric_distort_without_the_channel_permutation() -> None:
    """Same random draws as RandomPhotometricDistort: equal output where it drew no permutation, and a
    channel permutation of it where it did; "jitter" itself never swaps the colour channels."""
    from itertools import permutations

    from torchvision.transforms import v2

    from harnet.data.transforms import ColorJitterNoPermute, photometric_transform

    assert isinstance(photometric_transform("jitter"), ColorJitterNoPermute)
    assert type(photometric_transform(True)) is type(photometric_transform("distort")) is v2.RandomPhotometricDistort
    assert photometric_transform(False) is None
    image = tv_tensors.Image(torch.rand(3, 8, 8))
    permuted = 0
    for seed in range(12):
        torch.manual_seed(seed)
        distort = v2.RandomPhotometricDistort()(image)
        torch.manual_seed(seed)
        jitter = ColorJitterNoPermute()(image)
        matches = [list(p) for p in permutations(range(3)) if torch.allclose(distort, jitter[list(p)], atol=1e-6)]
        assert matches, f"seed {seed}: jitter is not the distort minus a permutation"
        permuted += [0, 1, 2] not in matches
    assert permuted > 0  # some seeds did permute in the distort


def test_photometric_config_accepts_jitter() -> None:
    import pytest

    from harnet.config.experiment import load_experiment
    from harnet.config.io import ConfigError

    assert load_experiment(None, ["data.photometric=jitter"]).data.photometric == "jitter"
    assert load_experiment(None, []).data.photometric is True
    with pytest.raises(ConfigError, match="data.photometric"):
        load_experiment(None, ["data.photometric=permute"])


def test_nodata_stays_out_of_the_colour_augmentation() -> None:
    """NaN pixels would spread through contrast (which averages the image): they are filled for it and NaN again
    after; an image without NaN gets exactly the bare transform's result, from the same random draws."""
    from harnet.data.transforms import KeepNodata, photometric_transform

    mean = (0.4, 0.5, 0.6)
    image, target = _sample([[1.0, 1.0, 8.0, 8.0]], [1])
    torch.manual_seed(3)
    bare = photometric_transform(True)(image, target)[0]  # type: ignore[misc]
    keep = KeepNodata(photometric_transform(True), mean)  # type: ignore[arg-type]
    torch.manual_seed(3)
    assert torch.equal(keep(image, target)[0], bare)
    holed = image.clone()
    holed[:, :3] = float("nan")
    for seed in range(6):
        torch.manual_seed(seed)
        out, kept = keep(tv_tensors.Image(holed), target)
        assert isinstance(out, tv_tensors.Image) and torch.equal(kept["boxes"], target["boxes"])
        assert torch.isnan(out[:, :3]).all() and torch.isfinite(out[:, 3:]).all()
    steps = build_transforms(True, photometric=True, nodata_fill=mean).transforms
    assert any(isinstance(step, KeepNodata) for step in steps)


def test_colour_augmentation_is_for_eight_bit_rgb() -> None:
    from harnet.config.model import InputConfig
    from harnet.data.transforms import photometric_note

    assert photometric_note(InputConfig()) is None and photometric_note(InputConfig(3, (3, 2, 1))) is None
    note = photometric_note(InputConfig(4, None, "uint16"))
    assert note is not None and "4 bands of uint16" in note and "flips" in note
    assert photometric_note(InputConfig(4, None, "uint8")) is not None
