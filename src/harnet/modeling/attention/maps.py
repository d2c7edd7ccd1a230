"""What the three attentions computed for a batch, returned by :meth:`HARNet.attention_maps`.

The values are those of the very pass that produced the detections (the network returns them; nothing
is captured from outside), with the geometry needed to map them onto the input images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class AttentionMaps:
    """Detections as ``model(images)`` in eval mode, plus the attention read-outs of that pass.

    Each read-out is empty when its attention is off. Feature maps cover the padded batch
    (``padded_size``); image ``i`` occupies its top-left ``image_sizes[i]`` and was resized from
    ``original_sizes[i]``.
    """

    detections: list[dict[str, Tensor]]
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padded batch
    original_sizes: list[tuple[int, int]]  # (h, w) of each input image
    padded_size: tuple[int, int]  # (h, w) of the batch the network ran on
    spatial: list[Tensor] = field(default_factory=list)  # P3..P7: (N, 1, h, w) masks in (0, 1)
    offsets: dict[str, Tensor] = field(default_factory=dict)  # "c4"/"c5": (N, 2*9*groups, h, w) (dy, dx)
    channel: dict[str, Tensor] = field(default_factory=dict)  # "classification"/"box": (N, C) SE weights
