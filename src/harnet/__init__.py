"""HAR-Net: joint learning of hybrid attention for single-stage object detection."""

from harnet.config.model import HARNetConfig
from harnet.engine.predictor import Detector
from harnet.modeling.harnet import HARNet
from harnet.modeling.torchvision_compat import load_torchvision_retinanet, torchvision_retinanet_config

__all__ = ["Detector", "HARNet", "HARNetConfig", "load_torchvision_retinanet", "torchvision_retinanet_config"]
__version__ = "0.1.0"
