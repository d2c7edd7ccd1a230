"""HAR-Net: joint learning of hybrid attention for single-stage object detection."""

from harnet.config import HARNetConfig
from harnet.detector import Detector
from harnet.model import HARNet
from harnet.torchvision_compat import load_torchvision_retinanet, torchvision_retinanet_config

__all__ = ["Detector", "HARNet", "HARNetConfig", "load_torchvision_retinanet", "torchvision_retinanet_config"]
__version__ = "0.1.0"
