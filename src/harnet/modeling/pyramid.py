"""The feature pyramid's geometry as the network produces it: levels P3..P7, their strides (defined in
:mod:`harnet.config.pyramid`) and the feature-map sizes of a padded batch.

Anchors, the head, export and explain all read it here; a second copy would let them drift apart.
"""

from __future__ import annotations

from harnet.config.pyramid import LEVEL_NAMES, LEVEL_STRIDES, NUM_LEVELS


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature map sizes of P3..P7 for a padded input: every stride-2 layer of the backbone and of
    P6/P7 rounds up, so level ``l`` is ``ceil(size / stride_l)``."""
    return [(-(-height // s), -(-width // s)) for s in LEVEL_STRIDES]


__all__ = ["LEVEL_NAMES", "LEVEL_STRIDES", "NUM_LEVELS", "level_shapes"]
