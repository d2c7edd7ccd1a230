"""High-level prediction API in PyTorch terms: ``Detector.from_checkpoint(path).predict(images)``.

A thin face on :class:`harnet.deploy.predictor.Predictor` with the torch backend
(:class:`~harnet.engine.torch_runtime.TorchRuntime`): it takes files, PIL images and tensors and answers
tensors, while pre-processing, decoding, suppression, test-time augmentation and tiling are the pipeline's,
the same for a checkpoint as for its exports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from harnet.data.image_io import load_image
from harnet.deploy.predict_raster import window_bar
from harnet.deploy.raster import ArrayRaster, Raster
from harnet.deploy.tiling import DEFAULT_OVERLAP, window_grid
from harnet.deploy.tta import TTAConfig
from harnet.engine import checkpoint
from harnet.engine.device import resolve_device
from harnet.engine.torch_runtime import torch_predictor

ImageInput = str | Path | Image.Image | Tensor


def _tensors(det: dict[str, Any]) -> dict[str, Any]:
    return {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v) for k, v in det.items()}


class Detector:
    """A trained model plus its class names, ready to run on files, PIL images or tensors."""

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        device: str = "auto",
        batch_size: int = 4,
        tta: TTAConfig | None = None,
        optimize: bool = False,
    ) -> None:
        """``optimize``: fold BatchNorms and use channels_last (:func:`optimize_for_inference`), rewriting
        ``model`` in place, so it is off for a model passed in and on for one loaded from a checkpoint."""
        self.device = resolve_device(device)
        self.model = model
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        self.predictor = torch_predictor(model, self.class_names, self.category_ids, self.device, batch_size, tta,
                                         optimize)

    @property
    def batch_size(self) -> int:
        """Images (or windows) per network run."""
        return self.predictor.batch_size

    @property
    def tta(self) -> TTAConfig | None:
        """Test-time augmentation (flip, scales) when set."""
        return self.predictor.tta

    @tta.setter
    def tta(self, value: TTAConfig | None) -> None:
        self.predictor.tta = value

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", batch_size: int = 4, tta: TTAConfig | None = None,
        optimize: bool = True,
    ) -> Detector:
        """Load a ``.pt`` file or a run folder (its best.pt, else last.pt) safely (weights only), optimised
        for inference unless ``optimize=False`` (the same detections to float rounding, faster)."""
        ckpt = checkpoint.load(path)
        return cls(checkpoint.build_model(ckpt), ckpt["class_names"], ckpt["category_ids"], device, batch_size, tta,
                   optimize)

    @staticmethod
    def to_tensor(image: ImageInput) -> Tensor:
        """File path, PIL image or CHW tensor (uint8 or float in [0, 1]) -> float CHW RGB tensor."""
        if isinstance(image, (str, Path)):
            return load_image(image).as_subclass(Tensor)
        if isinstance(image, Image.Image):
            return TF.to_dtype(TF.pil_to_tensor(image.convert("RGB")), torch.float32, scale=True)
        if image.dtype == torch.uint8:
            return image.float() / 255
        return image

    def predict(
        self, images: ImageInput | Sequence[ImageInput], score_thresh: float = 0.0
    ) -> list[dict[str, Any]]:
        """One dict per image: ``boxes`` (n, 4) XYXY pixels, ``scores``, ``labels`` (tensors), ``names``."""
        single = isinstance(images, (str, Path, Image.Image, Tensor))
        items: list[ImageInput] = [images] if single else list(images)  # type: ignore[arg-type, list-item]
        # Files are read as the model reads them (its bands and units); the rest are RGB.
        arrays = [self.predictor.load_image(x) if isinstance(x, (str, Path)) else
                  self.to_tensor(x).detach().float().cpu().numpy() for x in items]
        return [_tensors(det) for det in self.predictor.predict(arrays, score_thresh)]

    def tile_hint(self, size: Sequence[int]) -> str | None:
        """Advice for an image of ``size`` (h, w) much larger than the model's test size, else None."""
        return self.predictor.tile_hint(size)

    def predict_tiled(
        self, image: str | Path | Raster | Tensor, tile: int, overlap: float = DEFAULT_OVERLAP, *,
        bands: Sequence[int] | None = None, score_thresh: float = 0.0, progress: bool = False,
    ) -> dict[str, Any]:
        """Detections of a raster of any size (a file, an open :class:`~harnet.deploy.raster.Raster` or a CHW
        tensor), read and predicted window by window at the model's scale and merged at the seams
        (:mod:`harnet.deploy.tiling`). Same keys as :meth:`predict`, boxes in the raster's pixels."""
        if isinstance(image, Tensor):
            raster: Raster = ArrayRaster(image.detach().float().cpu().numpy())
        else:
            raster = self.predictor.open_raster(image, bands) if isinstance(image, (str, Path)) else image
        bar = window_bar(len(window_grid(raster.width, raster.height, tile, overlap, self.predictor.min_tile)),
                         raster.path, progress)
        try:
            result = self.predictor.predict_tiled(raster, tile, overlap, score_thresh,
                                                  progress=bar.update if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()
            if isinstance(image, (str, Path)):
                raster.close()
        return _tensors(result.detections)

