"""Make a loaded detector fast for inference without changing what it computes.

A checkpoint's network is built for training: frozen BatchNorm as separate multiply-add passes,
contiguous (NCHW) tensors. For prediction only, :func:`optimize_for_inference` rewrites it in place:

- every eval-mode BatchNorm is folded into the conv before it
  (:func:`harnet.modeling.fold_bn.fold_batch_norms`), which removes two memory passes per conv;
- on the CPU the weights go to ``channels_last``, the layout oneDNN's convolutions run natively
  (NCHW activations are reordered at every conv otherwise).

Measured on the demo network at 320 px, 2 threads: docs/RESULTS.md ("CPU inference"). The deformable
convs of the aligned attention pick their fast CPU path themselves
(:mod:`harnet.modeling.attention.deform_sampling`). Outputs equal the plain model's to float
rounding (tests/engine/test_fast_inference.py).
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from harnet.modeling.fold_bn import fold_batch_norms

ModuleT = TypeVar("ModuleT", bound=nn.Module)

EXAMPLE_SIZE = 64  # the pass that reads which norm follows which conv; any size the model accepts


def optimize_for_inference(model: ModuleT, device: torch.device) -> ModuleT:
    """``model`` in eval mode, its BatchNorms folded and, on the CPU, in ``channels_last``; in place.

    ``model`` follows the detection contract (a list of CHW images in, detections out); it must not
    be trained afterwards (the folded convs no longer see the norms' statistics)."""
    model.eval()
    example = [torch.rand(input_channels(model), EXAMPLE_SIZE, EXAMPLE_SIZE, device=device)]
    fold_batch_norms(model, example)
    if device.type == "cpu":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


def input_channels(model: nn.Module) -> int:
    """The channels a detector's images have: its config's (``model.input``), or its transform's mean's length
    (torchvision's RetinaNet)."""
    config = getattr(model, "config", None)
    if config is not None:
        return int(config.input.channels)
    return len(getattr(getattr(model, "transform", None), "image_mean", (0.0, 0.0, 0.0)))
