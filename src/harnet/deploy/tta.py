"""Test-time augmentation settings, and the two steps of it that are geometry: mirroring boxes back and the
suppression recipe the pooled views get.

Each view (scale x flip) runs the network and keeps its candidates *before* suppression; the candidates
are mapped back to the input image, pooled over all views and suppressed once with Soft-NMS and box
voting, as in Detectron's test-time augmentation: voting then averages the same object's boxes across
views, which is where the gain comes from. :class:`harnet.deploy.predictor.Predictor` runs it for every
backend; :mod:`harnet.engine.tta` runs it on a torch model for training-time evaluation on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from harnet.config.model import InferenceConfig

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


def tta_inference(cfg: TTAConfig, inference: InferenceConfig) -> InferenceConfig:
    """The suppression recipe of the pooled views."""
    if cfg.merge == "soft_nms_vote":
        return replace(inference, nms="soft_nms", box_voting_iou=cfg.box_voting_iou,
                       final_score_thresh=cfg.final_score_thresh)
    return inference


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror (n, 4) XYXY boxes of an image ``width`` pixels wide (its own inverse)."""
    w = np.float32(width)
    return np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1).astype(np.float32)
