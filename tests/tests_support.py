"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path

TINY = [
    "model.preset=hybrid",
    "model.backbone={name: resnet18, norm: bn, trainable_layers: 5}",
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
