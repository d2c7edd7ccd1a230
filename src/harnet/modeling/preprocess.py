"""Image geometry: resize + normalise + pad on the way in, boxes back to input pixels on the way out.

The one definition of what the network sees. :meth:`HARNet.preprocess` applies it with the model's
mode (training draws a short side from ``min_size``; testing uses ``transform.test_sizes``), and
``forward``, test-time augmentation, explain and export all go through it, so a box, a mask or an
anchor is mapped with the same sizes everywhere. Export's deployment helpers have a config and no
model, so the functions here take the config section rather than the model.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from harnet.config.model import TransformConfig

Targets = list[dict[str, Tensor]]
Size = tuple[int, int]


class HARNetTransform(GeneralizedRCNNTransform):
    """torchvision's transform, with nodata: pixels a raster flags nodata arrive as NaN (see
    :func:`harnet.data.image_io.load_bands`) and leave normalisation as 0, the band's training mean, before the
    resize can spread them. For an image without NaN it computes exactly what torchvision's does."""

    def normalize(self, image: Tensor) -> Tensor:
        out = super().normalize(image)
        return out.nan_to_num_(nan=0.0, posinf=torch.inf, neginf=-torch.inf)


def build_transform(cfg: TransformConfig, training: bool, scale: float = 1.0) -> GeneralizedRCNNTransform:
    """torchvision's resize + normalise + pad. Training draws a short side from ``min_size``; testing uses
    ``test_min_size`` (else the last ``min_size``) and ``test_max_size`` (else ``max_size``), both times
    ``scale`` (test-time augmentation)."""
    if training:
        if scale != 1.0:
            raise ValueError(f"a test-time scale ({scale:g}) applies to eval-mode preprocessing; call model.eval()")
        min_size: int | tuple[int, ...] = cfg.min_size
        max_size = cfg.max_size
    else:
        short, long = cfg.test_sizes
        min_size, max_size = round(short * scale), round(long * scale)
    transform = HARNetTransform(min_size, max_size, list(cfg.image_mean), list(cfg.image_std),
                                size_divisible=cfg.size_divisible)
    return transform.train(training)


def preprocess(cfg: TransformConfig, images: list[Tensor], targets: Targets | None = None, *, training: bool,
               scale: float = 1.0) -> tuple[ImageList, Targets | None]:
    """Float CHW images of any sizes (the model's input channels, in its units: RGB in [0, 1] by default; and their
    targets, boxes resized with them) -> one normalised batch zero-padded bottom/right to a multiple of
    ``size_divisible``, with each image's resized size."""
    check_channels(cfg, images)
    image_list, targets = build_transform(cfg, training, scale)(list(images), targets)
    image_list.image_sizes = [(int(h), int(w)) for h, w in image_list.image_sizes]
    return image_list, targets


def check_channels(cfg: TransformConfig, images: list[Tensor]) -> None:
    """Images with another channel count than the model's: one line, before a convolution says it its way."""
    wanted = len(cfg.image_mean)
    for image in images:
        if image.dim() == 3 and image.shape[0] != wanted:
            raise ValueError(f"image has {image.shape[0]} channel(s), the model reads {wanted} (model.input; "
                             "transform.image_mean has one value per channel)")


def original_sizes(images: list[Tensor]) -> list[Size]:
    """(h, w) of each input image: what detections are mapped back to."""
    return [(int(img.shape[-2]), int(img.shape[-1])) for img in images]


def padded_size(image_list: ImageList) -> Size:
    """(h, w) of the padded batch the network runs on."""
    return int(image_list.tensors.shape[-2]), int(image_list.tensors.shape[-1])


def to_input_pixels(detections: Targets, image_sizes: list[Size], originals: list[Size]) -> Targets:
    """Undo the resize: boxes from resized-image pixels to input-image pixels (torchvision's
    ``GeneralizedRCNNTransform.postprocess`` for boxes)."""
    out = []
    for det, resized, original in zip(detections, image_sizes, originals):
        out.append({**det, "boxes": resize_boxes(det["boxes"], resized, original)})
    return out
