"""High-level prediction API: ``Detector.from_checkpoint(path).predict(images)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from harnet.data.image_io import load_image
from harnet.data.raster import Raster, open_raster
from harnet.engine import checkpoint
from harnet.engine.device import resolve_device
from harnet.engine.fast_inference import optimize_for_inference
from harnet.engine.tiling import DEFAULT_OVERLAP, predict_tiled
from harnet.engine.tta import TTAConfig, tta_predict

# An image this many times the model's test size (long side) is shrunk enough for objects to vanish.
TILE_HINT_RATIO = 2.0

ImageInput = str | Path | Image.Image | Tensor


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
        self.model = model.to(self.device).eval()
        if optimize:
            optimize_for_inference(self.model, self.device)
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        self.batch_size = batch_size
        self.tta = tta  # test-time augmentation (flip, scales) when set

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

    @torch.inference_mode()
    def predict(
        self, images: ImageInput | Sequence[ImageInput], score_thresh: float = 0.0
    ) -> list[dict[str, Any]]:
        """One dict per image: ``boxes`` (n, 4) XYXY pixels, ``scores``, ``labels``, ``names``."""
        single = isinstance(images, (str, Path, Image.Image, Tensor))
        items: list[ImageInput] = [images] if single else list(images)  # type: ignore[arg-type, list-item]
        results: list[dict[str, Any]] = []
        for start in range(0, len(items), self.batch_size):
            batch = [self.to_tensor(x).to(self.device) for x in items[start : start + self.batch_size]]
            outputs = tta_predict(self.model, batch, self.tta) if self.tta is not None else self.model(batch)
            for out in outputs:
                keep = out["scores"] >= score_thresh
                kept: dict[str, Any] = {k: v[keep].cpu() for k, v in out.items()}
                kept["names"] = [self.class_names[i] for i in kept["labels"].tolist()]
                results.append(kept)
        return results

    def tile_hint(self, size: Sequence[int]) -> str | None:
        """Advice for an image of ``size`` (h, w) much larger than the model's test size, else None."""
        config = getattr(self.model, "config", None)
        if config is None:
            return None
        short, _ = config.transform.test_sizes
        if max(int(v) for v in size) <= TILE_HINT_RATIO * short:
            return None
        return (f"{int(size[1])}x{int(size[0])} px shrunk to the model's {short} px test size; objects may vanish: "
                "predict it in windows with --tile SIZE (the size of the training tiles)")

    @torch.inference_mode()
    def predict_tiled(
        self, image: str | Path | Raster, tile: int, overlap: float = DEFAULT_OVERLAP, *,
        bands: Sequence[int] | None = None, score_thresh: float = 0.0, progress: bool = False,
    ) -> dict[str, Any]:
        """Detections of a raster of any size (a file or an open :class:`~harnet.data.raster.Raster`), read and
        predicted window by window at the model's scale and merged at the seams (:mod:`harnet.engine.tiling`).
        Same keys as :meth:`predict`, boxes in the raster's pixels."""
        raster = open_raster(image, bands) if isinstance(image, (str, Path)) else image
        try:
            run = (lambda images: tta_predict(self.model, images, self.tta)) if self.tta is not None else None
            result = predict_tiled(self.model, raster, tile, overlap, batch_size=self.batch_size, device=self.device,
                                   predict_batch=run, progress=progress)
        finally:
            if isinstance(image, (str, Path)):
                raster.close()
        det = result.detections
        keep = det["scores"] >= score_thresh
        out: dict[str, Any] = {k: v[keep] for k, v in det.items()}
        out["names"] = [self.class_names[i] for i in out["labels"].tolist()]
        return out
