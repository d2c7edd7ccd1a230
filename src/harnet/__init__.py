"""HAR-Net: joint learning of hybrid attention for single-stage object detection.

The top-level names load on first use (PEP 562): ``from harnet import HARNet`` imports torch, while
``import harnet.deploy`` on a device without torch (numpy, pillow and a runtime) must not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harnet.config.model import HARNetConfig
    from harnet.engine.predictor import Detector
    from harnet.modeling.harnet import HARNet
    from harnet.modeling.torchvision_compat import load_torchvision_retinanet, torchvision_retinanet_config

_LAZY = {
    "HARNetConfig": "harnet.config.model",
    "Detector": "harnet.engine.predictor",
    "HARNet": "harnet.modeling.harnet",
    "load_torchvision_retinanet": "harnet.modeling.torchvision_compat",
    "torchvision_retinanet_config": "harnet.modeling.torchvision_compat",
}

__all__ = ["Detector", "HARNet", "HARNetConfig", "load_torchvision_retinanet", "torchvision_retinanet_config"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'harnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
