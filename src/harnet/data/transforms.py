"""Data augmentation for detection samples ``(image, {"boxes", "labels", "image_id"})``.

Only geometry-preserving, label-safe augmentation lives here. Resizing and normalisation are not: the
model does both itself (so evaluation, export and inference cannot disagree with training about them).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def build_transforms(train: bool, hflip_prob: float = 0.5, photometric: bool = True) -> v2.Transform:
    """Return the v2 transform to pass as a dataset's ``transforms``.

    Training: horizontal flip and (optionally) ``RandomPhotometricDistort``, then ``ClampBoundingBoxes``
    and ``SanitizeBoundingBoxes``, so that whatever augmentation is added before them can never hand the
    loss a box outside the image or a box that has collapsed (their labels are dropped with them).
    Evaluation: only a dtype guarantee (float32 in [0, 1]), so predictions map 1:1 to original pixels.
    """
    steps: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    if train:
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(p=hflip_prob))
        if photometric:
            steps.append(v2.RandomPhotometricDistort())
        # The default labels_getter finds target["labels"] in an (image, target) pair.
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes()]
    return v2.Compose(steps)
