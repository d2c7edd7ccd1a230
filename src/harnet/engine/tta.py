"""Test-time augmentation of a torch model: horizontal flip and several test scales, merged by one suppression.

The settings and the recipe are :mod:`harnet.deploy.tta`'s; prediction runs it for every backend in
:class:`harnet.deploy.predictor.Predictor` (numpy). This torch copy serves training-time evaluation,
where the candidates stay on the GPU; tests/engine/test_tta.py ties the two.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes

from harnet.deploy.tta import PAPER_SCALES as PAPER_SCALES
from harnet.deploy.tta import TTAConfig, tta_inference
from harnet.modeling.harnet import HARNet
from harnet.modeling.postprocess import suppress


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror XYXY boxes of an image ``width`` pixels wide (its own inverse)."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def _view_candidates(model: HARNet, images: list[Tensor], scale: float) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Candidates of every image at one scale, boxes in input-image pixels."""
    image_list, _ = model.preprocess(images, scale=scale)
    candidates = model.dense_outputs(image_list).candidates(model.box_coder, model.config.inference)
    out = []
    for (boxes, scores, labels), resized, img in zip(candidates, image_list.image_sizes, images):
        out.append((resize_boxes(boxes, resized, img.shape[-2:]), scores, labels))
    return out


@torch.inference_mode()
def tta_predict(model: nn.Module, images: list[Tensor], cfg: TTAConfig | None = None) -> list[dict[str, Tensor]]:
    """Like ``model(images)`` in eval mode (same keys, dtypes, input-pixel boxes), over all views."""
    if not isinstance(model, HARNet):
        raise TypeError(f"test-time augmentation runs HAR-Net models, not {type(model).__name__}")
    cfg = cfg or TTAConfig()
    was_training = model.training
    model.eval()
    flips = (False, True) if cfg.flip else (False,)
    pooled: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in images]
    try:
        for flip in flips:
            views = [img.flip(-1) for img in images] if flip else list(images)
            for scale in cfg.scales:
                for i, (boxes, scores, labels) in enumerate(_view_candidates(model, views, scale)):
                    if flip:
                        boxes = flip_boxes(boxes, images[i].shape[-1])
                    pooled[i].append((boxes, scores, labels))
    finally:
        model.train(was_training)
    inference = tta_inference(cfg, model.config.inference)
    results = []
    for image_views in pooled:
        boxes, scores, labels = (torch.cat(parts) for parts in zip(*image_views))
        results.append(suppress(boxes, scores, labels, inference))
    return results
