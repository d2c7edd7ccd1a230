"""The feature pyramid's fixed levels P3..P7 and their strides: the one copy of these numbers.

They live in the config layer because both the config (``anchors.stride_mode`` checks the anchor sizes
against the levels) and the network (anchors, head, export, explain via ``harnet.modeling.pyramid``) need
them, and imports only run tools -> engine -> modeling -> config.
"""

from __future__ import annotations

LEVEL_NAMES = ("P3", "P4", "P5", "P6", "P7")
LEVEL_STRIDES = (8, 16, 32, 64, 128)  # 2**level
NUM_LEVELS = len(LEVEL_NAMES)
