"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TINY = [
    "model.preset=hybrid",
    "model.backbone={name: resnet18, norm: bn, trainable_layers: 5, weights: null}",
    "model.fpn.channels=32",
    "model.aligned.mid_channels=32",
    "model.head.num_convs=2",
    "model.anchors.sizes=[8, 16, 32, 64, 128]",
    "model.transform={min_size: [64], max_size: 64}",
    "data.format=shapes",
    "train.batch_size=2",
    "train.max_steps=4",
    "train.warmup_steps=2",
    "train.lr=0.01",
    "train.lr_steps=[3]",
    "train.checkpoint_every=2",
]


def tiny_overrides(shapes_root: Path, out: Path) -> list[str]:
    """A ResNet-18, 32-channel, 64 px hybrid run: a few hundred ms per step."""
    return [*TINY, f"data.shapes={{root: {shapes_root}, num_images: 20, size: 64}}", f"output_dir={out}"]


def tiny_args(shapes_root: Path, out: Path) -> list[str]:
    """The same as ``harnet train`` arguments."""
    args = ["--config", "demo"]
    for item in tiny_overrides(shapes_root, out):
        args += ["--set", item]
    return args


def random_checkpoint(path: Path, overrides: list[str], seed: int = 0) -> Path:
    """A checkpoint of an untrained model (no training run needed) whose outputs vary enough to give
    detections: offsets and class-logit weights are drawn larger than the training init, so the
    deformable sampling moves and scores spread above the score threshold."""
    import torch

    from harnet.config.experiment import load_experiment
    from harnet.engine import checkpoint
    from harnet.modeling.harnet import HARNet

    cfg = load_experiment(None, overrides)
    torch.manual_seed(seed)
    model = HARNet(cfg.model)
    with torch.no_grad():
        for block in model.aligned.values():
            block.offset.weight.normal_(std=0.05)
        for name, p in model.head.named_parameters():
            if "cls_logits" in name:
                p.normal_(std=0.3 if name.endswith("weight") else 0.5)
    names = [f"class{i}" for i in range(cfg.model.num_classes)]
    checkpoint.save_atomic({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": names,
                            "category_ids": list(range(1, len(names) + 1))}, path)
    return path


def write_geotiff(path: Path, data: np.ndarray, nodata: float | None = None, crs: str | None = "EPSG:32633",
                  **profile: object) -> Path:
    """``data`` (bands, h, w) as a GeoTIFF with its own data type (skips the test without rasterio)."""
    import pytest

    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    count, height, width = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype=data.dtype,
                       crs=crs, transform=from_origin(500000.0, 4000000.0, 0.1, 0.1), nodata=nodata,
                       **profile) as ds:
        ds.write(data)
    return path
