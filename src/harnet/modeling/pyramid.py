"""The feature pyramid's geometry, in one place: levels P3..P7 and their strides.

Anchors, the head, export and explain all need it; a second copy would let them drift apart.
"""

from __future__ import annotations

LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")
LEVEL_STRIDES = (8, 16, 32, 64, 128)  # 2**level
NUM_LEVELS = len(LEVEL_NAMES)


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature map sizes of P3..P7 for a padded input: every stride-2 layer of the backbone and of
    P6/P7 rounds up, so level ``l`` is ``ceil(size / stride_l)``."""
    return [(-(-height // s), -(-width // s)) for s in LEVEL_STRIDES]
