"""Data augmentation for detection samples ``(image, {"boxes", "labels", "image_id"})``.

Only geometry-preserving, label-safe augmentation lives here. Resizing and normalisation are not: the
model does both itself (so evaluation, export and inference cannot disagree with training about them).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torchvision.transforms import v2

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
                     rot90_prob: float = 0.0) -> v2.Transform:
    """Return the v2 transform to pass as a dataset's ``transforms``.

    Training: a ``random_crop`` x ``random_crop`` crop at a random place (zero-padded where the image is
    smaller; None: none), horizontal flips, for views from above (where "up" is arbitrary) vertical flips
    and quarter turns (with both flips: all eight symmetries of the square), and (optionally) colour
    augmentation (:func:`photometric_transform`),
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
            steps.append(colour)
        # The default labels_getter finds target["labels"] in an (image, target) pair.
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)
