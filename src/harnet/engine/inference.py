"""Run a model over a dataset and collect detections (used by training-time and final eval)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from harnet.data.loader import collate_fn
from harnet.engine.tta import TTAConfig, tta_predict


@torch.inference_mode()
def predict_dataset(
    model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int = 2, num_workers: int = 0,
    tta: TTAConfig | None = None,
) -> tuple[list[int], list[dict[str, Tensor]]]:
    """Detections for every image of ``dataset`` (in its order): (image ids, per-image dicts on CPU).
    With ``tta``, each batch goes through test-time augmentation instead of one forward pass."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn,
                        num_workers=num_workers)
    image_ids: list[int] = []
    predictions: list[dict[str, Tensor]] = []
    for images, targets in loader:
        batch = [img.to(device) for img in images]
        outputs = tta_predict(model, batch, tta) if tta is not None else model(batch)
        image_ids += [int(t["image_id"]) for t in targets]
        predictions += [{k: v.cpu() for k, v in out.items()} for out in outputs]
    model.train(was_training)
    return image_ids, predictions
