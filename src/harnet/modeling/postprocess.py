"""Detections from head outputs: per-level top-k and decoding in torch, then suppression (NMS or
Gaussian Soft-NMS, optional box voting: the paper's test recipe) by :mod:`harnet.deploy.postprocess`.

Why suppression runs in numpy even when training-time evaluation runs on the GPU: there is one
algorithm, the one every deployed backend predicts through, so what training evaluates is what ships,
and the batched Soft-NMS and voting are written, tested and tuned once. The cost of crossing to the host
is small: :func:`select_candidates` stays in torch and reduces the dense GPU outputs (every anchor times
every class) to at most ``topk_candidates`` per level, a few thousand boxes, before the copy.

The default path (hard NMS, no voting) is torchvision's RetinaNet post-processing step for step (the
numpy ``batched_nms`` is tested equal to torchvision's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import clip_boxes_to_image, remove_small_boxes

from harnet.config.model import InferenceConfig
from harnet.deploy import postprocess as np_postprocess
from harnet.deploy.postprocess import SOFT_NMS_MIN_SCORE as SOFT_NMS_MIN_SCORE
from harnet.utils.compat import BoxCoder


def select_candidates(
    logits_per_level: list[Tensor],
    deltas_per_level: list[Tensor],
    anchors_per_level: list[Tensor],
    image_size: tuple[int, int],
    box_coder: BoxCoder,
    cfg: InferenceConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """One image: per level keep scores > thresh, the top-k of those, decode and clip (and drop boxes
    under ``min_box_size``)."""
    all_boxes, all_scores, all_labels = [], [], []
    for logits, deltas, anchors in zip(logits_per_level, deltas_per_level, anchors_per_level):
        num_classes = logits.shape[-1]
        scores = torch.sigmoid(logits).flatten()
        idxs = torch.where(scores > cfg.score_thresh)[0]
        scores = scores[idxs]
        scores, order = scores.topk(min(cfg.topk_candidates, idxs.numel()))
        idxs = idxs[order]
        anchor_idxs = torch.div(idxs, num_classes, rounding_mode="floor")
        boxes = clip_boxes_to_image(box_coder.decode_single(deltas[anchor_idxs], anchors[anchor_idxs]), image_size)
        labels = idxs % num_classes
        if cfg.min_box_size > 0:
            keep = remove_small_boxes(boxes, cfg.min_box_size)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_labels.append(labels)
    return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels)


def suppress(boxes: Tensor, scores: Tensor, labels: Tensor, cfg: InferenceConfig) -> dict[str, Tensor]:
    """NMS or Soft-NMS across levels, optional box voting, then scores >= ``final_score_thresh``, at most
    ``detections_per_img`` by score: :func:`harnet.deploy.postprocess.suppress` on the host (float32
    boxes and scores, int64 labels), its detections back on the input's device in the input's dtypes."""
    out = np_postprocess.suppress(boxes.detach().to("cpu", torch.float32).numpy(),
                                  scores.detach().to("cpu", torch.float32).numpy(),
                                  labels.detach().to("cpu", torch.int64).numpy(), cfg)

    def back(array: np.ndarray, like: Tensor) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(like.device, like.dtype)

    return {"boxes": back(out["boxes"].reshape(-1, 4), boxes), "scores": back(out["scores"], scores),
            "labels": back(out["labels"], labels)}


def build_box_coder() -> BoxCoder:
    """RetinaNet's box coder (unit weights): one for the loss, decoding and export alike."""
    return BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))


@dataclass
class DenseOutputs:
    """What decoding needs: the head's test-time outputs over all anchors, the anchors, and the image sizes.

    The one decode path: :meth:`HARNet.dense_outputs` makes it from a batch (``forward``, test-time
    augmentation), export from the exported network's outputs; both decode it with these two methods.
    """

    cls_logits: Tensor  # (N, sum HWA, K)
    box_deltas: Tensor  # (N, sum HWA, 4)
    anchors: list[Tensor]  # per image, (sum HWA, 4)
    num_anchors_per_level: list[int]
    image_sizes: list[tuple[int, int]]  # resized (h, w) inside the padded batch

    def candidates(self, box_coder: BoxCoder, cfg: InferenceConfig) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per image (boxes, scores, labels) before suppression, in the resized image's coordinates
        (:func:`select_candidates` on each image's levels). Test-time augmentation pools these over views
        before one :func:`suppress`."""
        per_level = self.num_anchors_per_level
        return [
            select_candidates(list(logits.split(per_level)), list(deltas.split(per_level)),
                              list(anchors.split(per_level)), size, box_coder, cfg)
            for logits, deltas, anchors, size in zip(self.cls_logits, self.box_deltas, self.anchors, self.image_sizes)
        ]

    def detections(self, box_coder: BoxCoder, cfg: InferenceConfig) -> list[dict[str, Tensor]]:
        """Per image detections in the resized image's coordinates: candidates, then :func:`suppress`."""
        return [suppress(boxes, scores, labels, cfg) for boxes, scores, labels in self.candidates(box_coder, cfg)]
