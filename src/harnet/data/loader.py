"""Batching detection samples for ``torch.utils.data.DataLoader``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _plain(value: Any) -> Any:
    """Strip ``tv_tensors`` subclasses: their metadata was only needed by the transforms, and plain
    tensors keep model code free of tv_tensor unwrapping rules (and make pinning/moving cheaper)."""
    return value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else value


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep images as a list (sizes differ; the model batches them after resizing) and targets as dicts."""
    images = [_plain(image) for image, _ in batch]
    targets = [{key: _plain(value) for key, value in target.items()} for _, target in batch]
    return images, targets
