"""HAR-Net: joint learning of hybrid attention for single-stage object detection."""

from harnet.config import HARNetConfig

__all__ = ["HARNetConfig"]
__version__ = "0.1.0"
