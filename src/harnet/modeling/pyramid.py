"""The feature pyramid's geometry, in one place: levels P3..P7 and their strides.

Anchors, the head, export and explain all need it; a second copy would let them drift apart.
"""

from __future__ import annotations

LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")
LEVEL_STRIDES = (8, 16, 32, 64, 128)  # 2**level
NUM_LEVELS = len(LEVEL_NAMES)
