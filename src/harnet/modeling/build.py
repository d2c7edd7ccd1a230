"""Which network an experiment trains: HAR-Net (the default) or torchvision's RetinaNet peer."""

from __future__ import annotations

from typing import Literal

from torch import nn

from harnet.config.model import HARNetConfig
from harnet.modeling.harnet import build_harnet
from harnet.modeling.torchvision_peer import build_torchvision_retinanet

DetectorName = Literal["harnet", "torchvision_retinanet"]


def build_detector(name: DetectorName, cfg: HARNetConfig) -> nn.Module:
    """A detector following torchvision's contract (losses in train mode, detections in eval)."""
    if name == "torchvision_retinanet":
        return build_torchvision_retinanet(cfg)
    return build_harnet(cfg)
