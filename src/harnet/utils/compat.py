"""Every private torch/torchvision name harnet uses, behind small public wrappers.

harnet supports torch >= 2.4 with its matching torchvision (>= 0.19). A few things it needs are only
reachable through private names, which a release may rename or remove without notice. Keeping them all
here means one file to fix after an upgrade, and :data:`PRIVATE_NAMES` lets a test check that each one
still exists in the installed versions, so a removal fails loudly in CI instead of deep inside training.

What relies on which private name, and why:

* :func:`box_loss`: ``torchvision.models.detection._utils._box_loss`` (torchvision >= 0.15), the very box
  loss torchvision's RetinaNet trains with, so HAR-Net's losses equal torchvision's with attentions off.
* :func:`set_retinanet_box_loss`: ``RetinaNetRegressionHead._loss_type`` (torchvision >= 0.15; "l1" by
  default): torchvision's RetinaNet takes no box-loss argument, only this attribute selects another loss.
* :func:`foreach_lerp_` / :func:`foreach_copy_`: ``torch._foreach_lerp_`` (torch >= 2.0) and
  ``torch._foreach_copy_`` (torch >= 2.1), one fused kernel launch per update of the weight EMA instead of
  one per tensor. Both fall back to per-tensor public ops where missing.
* :func:`make_params_override` / :func:`parent_make_params`: transforms v2 draw a transform's random
  parameters in ``make_params`` (torchvision >= 0.21) or ``_get_params`` (0.17 to 0.20); an override
  must use the name the installed version calls.
* :data:`BatchNormBase`, :data:`InstanceNormBase`: ``torch.nn.modules.batchnorm._BatchNorm`` and
  ``torch.nn.modules.instancenorm._InstanceNorm``, the common bases of every BatchNorm (incl. lazy and
  SyncBatchNorm) and InstanceNorm; torch has no public base class for either.
* :data:`BoxCoder`, :data:`Matcher`, :data:`IntermediateLayerGetter`: public classes of private modules
  (``torchvision.models.detection._utils``, ``torchvision.models._utils``), re-exported so that no other
  module imports a private module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm
from torchvision.models import _utils as tv_model_utils
from torchvision.models.detection import _utils as det_utils
from torchvision.transforms import v2

# (module, attribute) of each private name used below. ``_loss_type`` is an instance attribute, checked on a
# fresh head by tests/utils/test_compat.py rather than here.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("torchvision.models.detection._utils", "_box_loss"),
    ("torchvision.models.detection._utils", "BoxCoder"),
    ("torchvision.models.detection._utils", "Matcher"),
    ("torchvision.models._utils", "IntermediateLayerGetter"),
    ("torch", "_foreach_lerp_"),
    ("torch", "_foreach_copy_"),
    ("torch.nn.modules.batchnorm", "_BatchNorm"),
    ("torch.nn.modules.instancenorm", "_InstanceNorm"),
)

BoxCoder = det_utils.BoxCoder
Matcher = det_utils.Matcher
IntermediateLayerGetter = tv_model_utils.IntermediateLayerGetter
BatchNormBase: type[nn.Module] = _BatchNorm
InstanceNormBase: type[nn.Module] = _InstanceNorm

# The name under which transforms v2 call a transform's parameter draw in the installed torchvision.
MAKE_PARAMS: str = "make_params" if hasattr(v2.Transform, "make_params") else "_get_params"

T = TypeVar("T", bound=type)


def missing_private_names() -> list[str]:
    """The entries of :data:`PRIVATE_NAMES` the installed torch/torchvision lack, as ``module.attribute``."""
    missing = []
    for module_name, attribute in PRIVATE_NAMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(f"{module_name}.{attribute}")
            continue
        if not hasattr(module, attribute):
            missing.append(f"{module_name}.{attribute}")
    return missing


def box_loss(kind: str, box_coder: Any, anchors: Tensor, matched_boxes: Tensor, deltas: Tensor,
             beta: float = 1.0) -> Tensor:
    """Summed box-regression loss of ``deltas`` against the boxes matched to ``anchors``, exactly as
    torchvision's RetinaNet computes it: ``kind`` "l1" or "smooth_l1" (with ``beta``) on the encoded
    targets, or "giou"/"diou"/"ciou" on the decoded boxes."""
    return det_utils._box_loss(kind, box_coder, anchors, matched_boxes, deltas, {"beta": beta})


def set_retinanet_box_loss(regression_head: nn.Module, kind: str) -> None:
    """Make a torchvision ``RetinaNetRegressionHead`` train with box loss ``kind`` (see :func:`box_loss`).

    Raises ``RuntimeError`` if the head has no ``_loss_type``: setting it anyway would add an attribute
    nothing reads and silently train with torchvision's default L1 loss."""
    if not hasattr(regression_head, "_loss_type"):
        raise RuntimeError("this torchvision's RetinaNetRegressionHead has no _loss_type; harnet.utils.compat "
                           "needs updating for it")
    regression_head._loss_type = kind  # type: ignore[assignment]  # nn.Module types attributes as Tensor | Module


def foreach_lerp_(tensors: Sequence[Tensor], ends: Sequence[Tensor], weight: float) -> None:
    """In place ``t = t + (end - t) * weight`` for each pair (``torch.lerp_``), fused where torch can."""
    fused: Callable[..., None] | None = getattr(torch, "_foreach_lerp_", None)
    if fused is not None:
        fused(list(tensors), list(ends), weight)
        return
    for t, end in zip(tensors, ends):
        t.lerp_(end, weight)


def foreach_copy_(tensors: Sequence[Tensor], sources: Sequence[Tensor]) -> None:
    """In place ``t.copy_(source)`` for each pair, fused where torch can."""
    fused: Callable[..., None] | None = getattr(torch, "_foreach_copy_", None)
    if fused is not None:
        fused(list(tensors), list(sources))
        return
    for t, source in zip(tensors, sources):
        t.copy_(source)


def parent_make_params(cls: type, transform: v2.Transform, flat_inputs: list[Any]) -> dict[str, Any]:
    """The random parameters the base class of ``cls`` draws for ``transform`` (an instance of ``cls``):
    what ``super().make_params(flat_inputs)`` means in a ``make_params`` override on any torchvision."""
    return getattr(super(cls, transform), MAKE_PARAMS)(flat_inputs)  # type: ignore[no-any-return]


def make_params_override(cls: T) -> T:
    """Class decorator for a transforms v2 subclass that overrides ``make_params``: before torchvision 0.21
    the transform calls ``_get_params`` instead, so the override is installed under that name too."""
    if MAKE_PARAMS != "make_params":
        setattr(cls, MAKE_PARAMS, vars(cls)["make_params"])
    return cls
