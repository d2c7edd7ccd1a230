"""Datasets from a DataConfig: shapes are generated once per settings, never silently reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harnet.config.experiment import DataConfig, ShapesConfig
from harnet.config.io import ConfigError
from harnet.config.model import InputConfig
from harnet.data.band_shapes import generate_band_shapes
from harnet.data.build import build_dataset, shapes_split
from harnet.data.image_io import BadImageError
from tests_support import write_geotiff


def test_shapes_generated_once_and_regenerated_on_new_settings(tmp_path: Path) -> None:
    cfg = ShapesConfig(root=str(tmp_path), num_images=10, size=64)
    images, ann = shapes_split(cfg, "train")
    first = ann.stat().st_mtime_ns
    shapes_split(cfg, "val")
    assert ann.stat().st_mtime_ns == first, "same settings: reused"
    cfg.num_images = 15
    _, ann = shapes_split(cfg, "train")
    assert len(json.loads(ann.read_text())["images"]) == 12
    assert images == tmp_path / "train"


def test_build_dataset_for_shapes(tmp_path: Path) -> None:
    data = DataConfig(shapes=ShapesConfig(root=str(tmp_path), num_images=10, size=64))
    train, val = build_dataset(data, "train"), build_dataset(data, "val")
    assert len(train) == 8 and len(val) == 2 and train.class_names == val.class_names


def _band_data(tmp_path: Path, **options: object) -> DataConfig:
    pytest.importorskip("rasterio")
    info = generate_band_shapes(tmp_path / "bands", num_images=8, size=32, **options)  # type: ignore[arg-type]
    return DataConfig(format="coco", train_images=str(info["train_images"]), train_annotations=str(info["train_ann"]),
                      val_images=str(info["val_images"]), val_annotations=str(info["val_ann"]))


def test_the_band_count_and_type_come_from_the_data_and_every_image_is_checked(tmp_path: Path) -> None:
    data = _band_data(tmp_path)
    train = build_dataset(data, "train")
    assert train.input == InputConfig(4, None, "uint16") and train[0][0].shape == (4, 32, 32)
    data.bands = (4, 3, 2)
    assert build_dataset(data, "train").input == InputConfig(3, (4, 3, 2), "uint16")
    odd = Path(data.train_images) / "000003.tif"
    write_geotiff(odd, np.ones((3, 32, 32), dtype=np.uint16), nodata=0)
    data.bands = None
    with pytest.raises(BadImageError, match=r"000003.tif: 3 bands of uint16, the first image \(.*000001.tif\) has 4 "
                                            "bands of uint16"):
        build_dataset(data, "train")
    data.skip_bad = True
    skipped = build_dataset(data, "train")
    assert len(skipped) == 5 and "000003.tif" in skipped.issues.items[0].file
    data.bands, data.skip_bad = (4,), False
    with pytest.raises(BadImageError, match=r"000003.tif: band 4 asked for \(data.bands \[4\]\), the image has 3"):
        build_dataset(data, "train")


def test_a_model_reads_its_own_bands_and_refuses_other_data(tmp_path: Path) -> None:
    data = _band_data(tmp_path)
    model = InputConfig(3, (4, 3, 2), "uint16")
    val = build_dataset(data, "val", model_input=model)
    assert val.bands == (4, 3, 2) and val.input == model
    data.bands = (1, 2, 3)
    with pytest.raises(ConfigError, match=r"data.bands \[1, 2, 3\]: the model reads bands \[4, 3, 2\]"):
        build_dataset(data, "val", model_input=model)
    data.bands = None
    with pytest.raises(BadImageError, match="000007.tif: 4 bands of uint16, the model reads 4 bands of uint8"):
        build_dataset(data, "val", model_input=InputConfig(4, None, "uint8"))
    with pytest.raises(BadImageError, match="4 bands of uint16, the model reads 3 bands of uint8"):
        build_dataset(data, "val", model_input=InputConfig())
