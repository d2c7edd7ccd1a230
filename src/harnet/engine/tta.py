"""Test-time augmentation: horizontal flip and several test scales, merged by one suppression.

Each view (scale x flip) runs the network and keeps its candidates *before* suppression (per
level top-k above the score threshold, decoded, clipped). The candidates are mapped back to the
input image (un-scaled, un-flipped), pooled over all views, and suppressed once with Soft-NMS and
box voting, as in Detectron's test-time augmentation: voting then averages the same object's boxes
across views, which is where the gain comes from. The output is the model's own format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import resize_boxes

from harnet.modeling.harnet import HARNet
from harnet.modeling.postprocess import suppress

# The paper's best results used two test scales; the second one is not given. 1.25x the model's test
# size is Detectron's usual companion scale (e.g. 800 -> 1000).
PAPER_SCALES = (1.0, 1.25)


@dataclass
class TTAConfig:
    """``scales`` multiply the model's test size (``transform.test_min_size``, else ``min_size[-1]``,
    and the test ``max_size``).

    ``merge="soft_nms_vote"`` suppresses the pooled candidates with the paper's test recipe
    (Gaussian Soft-NMS with the model's sigma, then box voting at ``box_voting_iou``, then scores >=
    ``final_score_thresh``) whatever the model's own settings; ``"model"`` uses the model's
    ``inference`` settings unchanged.
    """

    scales: tuple[float, ...] = PAPER_SCALES
    flip: bool = True
    merge: Literal["soft_nms_vote", "model"] = "soft_nms_vote"
    box_voting_iou: float = 0.6
    final_score_thresh: float = 0.05  # the authors' cut after voting

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"TTA scales must be positive numbers, got {list(self.scales)}")


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
    for flip in flips:
        views = [img.flip(-1) for img in images] if flip else list(images)
        for scale in cfg.scales:
            for i, (boxes, scores, labels) in enumerate(_view_candidates(model, views, scale)):
                if flip:
                    boxes = flip_boxes(boxes, images[i].shape[-1])
                pooled[i].append((boxes, scores, labels))
    inference = model.config.inference
    if cfg.merge == "soft_nms_vote":
        inference = replace(inference, nms="soft_nms", box_voting_iou=cfg.box_voting_iou,
                            final_score_thresh=cfg.final_score_thresh)
    results = []
    for image_views in pooled:
        boxes, scores, labels = (torch.cat(parts) for parts in zip(*image_views))
        results.append(suppress(boxes, scores, labels, inference))
    model.train(was_training)
    return results
