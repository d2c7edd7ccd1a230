"""A checkpoint's network as a prediction backend: ``run(images) -> (logits, deltas)`` in PyTorch.

The same contract as the exported runtimes (:mod:`harnet.deploy.runtime`): a normalised, padded numpy
batch in, the test-time ``cls_logits`` and ``box_deltas`` out (the hybrid's two prediction sets
averaged, :func:`~harnet.modeling.harnet.merge_prediction_sets`), exactly what export traces. Everything
around the network is :class:`harnet.deploy.predictor.Predictor`'s, so a checkpoint and its exports are
predicted by one pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from harnet.config.model import HARNetConfig
from harnet.deploy.metadata import ExportInfo
from harnet.deploy.predictor import Predictor
from harnet.deploy.tta import TTAConfig
from harnet.engine import checkpoint
from harnet.engine.device import resolve_device
from harnet.engine.fast_inference import optimize_for_inference
from harnet.modeling.harnet import HARNet, merge_prediction_sets


class TorchRuntime:
    """A HAR-Net module on ``device`` (eval mode), run under ``torch.inference_mode``."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        if not isinstance(model, HARNet):
            raise TypeError(f"prediction runs HAR-Net models (their raw outputs), not {type(model).__name__}; "
                            "evaluate a torchvision peer run with harnet eval")
        self.model = model
        self.device = torch.device(device)

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
            if self.device.type == "cpu":  # the layout optimize_for_inference gives the weights on the CPU
                batch = batch.contiguous(memory_format=torch.channels_last)
            logits, deltas = merge_prediction_sets(self.model.forward_raw(batch))
        finally:
            self.model.train(was_training)
        return logits.float().cpu().numpy(), deltas.float().cpu().numpy()


def checkpoint_info(config: HARNetConfig, class_names: list[str], category_ids: list[int],
                    extra: dict[str, Any] | None = None) -> ExportInfo:
    """What the pipeline needs of a checkpoint: the same record an export's metadata gives."""
    return ExportInfo(config, list(class_names), [int(c) for c in category_ids], dict(extra or {}))


def torch_predictor(model: nn.Module, class_names: Sequence[str], category_ids: Sequence[int],
                    device: str | torch.device = "auto", batch_size: int = 4, tta: TTAConfig | None = None,
                    optimize: bool = True, extra: dict[str, Any] | None = None) -> Predictor:
    """The pipeline around a HAR-Net module on ``device`` (eval mode); ``optimize`` folds its norms for
    inference in place (:func:`~harnet.engine.fast_inference.optimize_for_inference`)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    model.to(dev).eval()
    if optimize:
        optimize_for_inference(model, dev)
    info = checkpoint_info(model.config, list(class_names), list(category_ids), extra)  # type: ignore[arg-type]
    return Predictor(TorchRuntime(model, dev), info, batch_size, tta)


def load_predictor(path: str | Path, device: str = "auto", batch_size: int = 4, tta: TTAConfig | None = None,
                   optimize: bool = True) -> Predictor:
    """A ``.pt`` file or a run folder (its best.pt, else last.pt), loaded safely (weights only) and, unless
    ``optimize=False``, folded for inference."""
    ckpt = checkpoint.load(path)
    return torch_predictor(checkpoint.build_model(ckpt), ckpt["class_names"], ckpt["category_ids"], device,
                           batch_size, tta, optimize, {"checkpoint": str(ckpt["path"])})
