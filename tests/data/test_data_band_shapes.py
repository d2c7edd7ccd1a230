"""The 4-band 16-bit dataset whose objects show in band 4 only: what it holds, and that N-band training uses
every band (the model reading all four finds the objects, the RGB-only model of bands 1-3 cannot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.config.experiment import load_experiment
from harnet.data.band_shapes import generate_band_shapes
from harnet.engine.trainer import train

rasterio = pytest.importorskip("rasterio")

# AP bars of the done-when (issue #27): the 4-band model at least this, the RGB-only control below the other.
MIN_AP_ALL_BANDS = 0.3
MAX_AP_RGB_ONLY = 0.1


def test_objects_show_in_the_signal_band_only_and_nodata_is_flagged(tmp_path: Path) -> None:
    info = generate_band_shapes(tmp_path, num_images=12, size=64, seed=3)
    assert (info["num_train"], info["num_val"]) == (9, 3) and info["class_names"] == ["object"]
    again = generate_band_shapes(tmp_path / "again", num_images=12, size=64, seed=3)
    contrasts, strips = [], 0
    coco = json.loads(Path(info["train_ann"]).read_text())
    for image in coco["images"]:
        path = Path(info["train_images"]) / image["file_name"]
        with rasterio.open(path) as ds:
            data = ds.read().astype(np.float64)
            assert (ds.count, ds.dtypes[0], ds.nodata) == (4, "uint16", 0.0) and ds.crs is not None
        assert path.read_bytes() == (Path(again["train_images"]) / image["file_name"]).read_bytes()
        strips += bool((data == 0).all(axis=0).any())
        mask = np.zeros(data.shape[1:], dtype=bool)
        for ann in coco["annotations"]:
            if ann["image_id"] == image["id"]:
                x, y, w, h = (int(v) for v in ann["bbox"])
                mask[y : y + h, x : x + w] = True
                assert not (data[:, y : y + h, x : x + w] == 0).any(), "no object in a nodata strip"
        valid = (data != 0).all(axis=0)
        contrasts.append([data[b][mask].mean() - data[b][valid & ~mask].mean() for b in range(4)])
    contrast = np.mean(contrasts, axis=0)
    assert contrast[3] > 1000 and np.all(np.abs(contrast[:3]) < 400), contrast
    assert strips > 0


def _overrides(data: Path, out: Path, bands: str | None) -> list[str]:
    """A small from-scratch RetinaNet (ResNet-18 with BatchNorm, a GN head, 64 px): AdamW converges in a few hundred
    steps of batch 8."""
    return [
        "model.preset=retinanet",
        "model.backbone={name: resnet18, norm: bn, trainable_layers: 5, weights: null}",
        "model.fpn.channels=32", "model.head.num_convs=2", "model.head.norm=gn", "model.head.norm_groups=8",
        "model.anchors.sizes=[8, 16, 32, 64, 128]", "model.transform={min_size: [64], max_size: 64}",
        "data.format=coco", f"data.train_images={data}/train",
        f"data.train_annotations={data}/annotations/instances_train.json", f"data.val_images={data}/val",
        f"data.val_annotations={data}/annotations/instances_val.json", "data.vflip_prob=0.5", "data.rot90_prob=0.5",
        "train.optimizer=adamw", "train.lr=0.002", "train.batch_size=8", "train.max_steps=250", "train.warmup_steps=10",
        "train.lr_steps=[200]", "train.checkpoint_every=0", f"output_dir={out}",
        *([f"data.bands=[{bands}]"] if bands else []),
    ]


@pytest.mark.slow
def test_four_band_training_finds_what_rgb_alone_cannot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both runs on the same data, steps and seed; only ``data.bands`` differs."""
    generate_band_shapes(tmp_path / "data", num_images=80, size=64)
    four = train(load_experiment(None, _overrides(tmp_path / "data", tmp_path / "four", None)), progress=False)
    rgb = train(load_experiment(None, _overrides(tmp_path / "data", tmp_path / "rgb", "1, 2, 3")), progress=False)
    assert four.final is not None and rgb.final is not None
    ap_four, ap_rgb = four.final.stats["AP"], rgb.final.stats["AP"]
    with capsys.disabled():
        print(f"\n4-band AP {ap_four:.3f}, RGB-only (bands 1-3) AP {ap_rgb:.3f}")
    assert ap_four >= MIN_AP_ALL_BANDS and ap_rgb < MAX_AP_RGB_ONLY, (ap_four, ap_rgb)
