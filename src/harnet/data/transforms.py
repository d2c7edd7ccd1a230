"""Data augmentation for detection samples ``(image, {"boxes", "labels", "image_id"})``.

Only geometry-preserving, label-safe augmentation lives here. Resizing and normalisation are not: the
model does both itself (so evaluation, export and inference cannot disagree with training about them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from harnet.config.model import InputConfig
from harnet.utils.compat import make_params_override, parent_make_params

Photometric = bool | Literal["distort", "jitter"]


@make_params_override
class ColorJitterNoPermute(v2.RandomPhotometricDistort):
    """``RandomPhotometricDistort`` without its random channel permutation: brightness, contrast,
    saturation and hue each applied with probability ``p``, contrast before or after the rest.

    The permutation (also drawn with probability ``p``) turns RGB into e.g. BGR, which a body
    pretrained on ImageNet colours should not see. The random draws are the distort's own (the
    permutation is drawn and ignored), so the two differ only in that one step."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {**parent_make_params(ColorJitterNoPermute, self, flat_inputs), "channel_permutation": None}


class KeepNodata:
    """A colour transform applied to an image whose nodata pixels (NaN) are first set to ``fill`` (per channel,
    the training mean) and made NaN again after: brightness, contrast (which averages the whole image) and
    saturation would otherwise spread NaN over every pixel. Draws no random number of its own, so an image
    without nodata is transformed exactly as by the bare transform."""

    def __init__(self, transform: v2.Transform, fill: Sequence[float]) -> None:
        self.transform = transform
        self.fill = torch.tensor(list(fill), dtype=torch.float32)[:, None, None]

    def __call__(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        nodata = torch.isnan(image)
        if not bool(nodata.any()):
            return self.transform(image, target)
        filled = tv_tensors.wrap(torch.where(nodata, self.fill.to(image.dtype), image), like=image)
        out, target = self.transform(filled, target)
        return tv_tensors.wrap(out.masked_fill(nodata, float("nan")), like=out), target

    def __repr__(self) -> str:
        return f"KeepNodata({self.transform!r})"


def photometric_note(data: InputConfig) -> str | None:
    """Why colour augmentation is skipped for images that are ``data``, or None when it applies: it is defined for
    RGB in [0, 1] (3 channels of uint8), and would clip raw 16-bit values to 1 or mix unrelated bands."""
    if data.channels == 3 and data.dtype == "uint8":
        return None
    return (f"data.photometric skipped: colour augmentation is for 8-bit RGB and the images are {data.describe()} "
            "(flips, quarter turns and crops still apply)")


def photometric_transform(photometric: Photometric) -> v2.Transform | None:
    """``data.photometric`` -> its transform: true/"distort" -> ``RandomPhotometricDistort``,
    "jitter" -> :class:`ColorJitterNoPermute`, false -> None."""
    if photometric is False:
        return None
    if photometric is True or photometric == "distort":
        return v2.RandomPhotometricDistort()
    if photometric == "jitter":
        return ColorJitterNoPermute()
    raise ValueError(f"photometric: expected true, false, 'distort' or 'jitter', got {photometric!r}")


def build_transforms(train: bool, hflip_prob: float = 0.5, photometric: Photometric = True,
                     random_crop: int | None = None, vflip_prob: float = 0.0,
                     rot90_prob: float = 0.0, nodata_fill: Sequence[float] | None = None) -> v2.Transform:
    """Return the v2 transform to pass as a dataset's ``transforms``.

    Training: a ``random_crop`` x ``random_crop`` crop at a random place (zero-padded where the image is
    smaller; None: none), horizontal flips, for views from above (where "up" is arbitrary) vertical flips
    and quarter turns (with both flips: all eight symmetries of the square), and (optionally) colour
    augmentation (:func:`photometric_transform`; with ``nodata_fill``, the training mean per channel, nodata
    pixels are kept out of it: :class:`KeepNodata`),
    then ``ClampBoundingBoxes`` and ``SanitizeBoundingBoxes``, so that whatever augmentation is added before them
    can never hand the loss a box outside the image or a box that has collapsed (their labels are dropped
    with them).
    Evaluation: only a dtype guarantee (float32 in [0, 1]), so predictions map 1:1 to original pixels.
    """
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if train:
        if random_crop is not None:
            # Crops before the colour steps, which then touch only the pixels kept. Boxes are shifted into
            # the crop; the two steps below clip them to it and drop the ones left empty with their labels.
            steps.append(v2.RandomCrop(random_crop, pad_if_needed=True))
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
        if vflip_prob > 0:
            steps.append(v2.RandomVerticalFlip(p=vflip_prob))
        if rot90_prob > 0:
            # expand: the canvas turns with the image (H and W swap); a quarter turn maps boxes to boxes exactly.
            steps.append(v2.RandomApply([v2.RandomRotation((90, 90), expand=True)], p=rot90_prob))
        if (colour := photometric_transform(photometric)) is not None:
            steps.append(colour if nodata_fill is None else KeepNodata(colour, nodata_fill))  # type: ignore[arg-type]
        # The default labels_getter finds target["labels"] in an (image, target) pair.
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)
