"""The model's input from its training data: 8-bit RGB keeps the config, other data get per-band statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harnet.config.experiment import DataConfig, ShapesConfig
from harnet.config.model import HARNetConfig, InputConfig, TransformConfig
from harnet.data.band_shapes import generate_band_shapes
from harnet.data.band_stats import band_statistics, resolve_input
from harnet.data.build import build_dataset
from tests_support import write_geotiff


def _coco(tmp_path: Path, images: list[np.ndarray], nodata: float | None = 0) -> DataConfig:
    """A one-class COCO dataset of these GeoTIFFs (no boxes needed for statistics)."""
    import json

    folder = tmp_path / "images"
    folder.mkdir()
    entries = []
    for i, data in enumerate(images):
        write_geotiff(folder / f"{i}.tif", data, nodata=nodata)
        entries.append({"id": i + 1, "file_name": f"{i}.tif", "width": data.shape[2], "height": data.shape[1]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": entries, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    return DataConfig(format="coco", train_images=str(folder), train_annotations=str(ann))


def test_statistics_leave_nodata_out(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(100, 4000, (2, 20, 30), dtype=np.uint16) for _ in range(3)]
    images[1][:, :, :10] = 0  # nodata
    dataset = build_dataset(_coco(tmp_path, images), "train")
    mean, std, sampled = band_statistics(dataset)
    valid = [np.concatenate([im[b][im[b] > 0] for im in images]).astype(np.float64) for b in range(2)]
    assert sampled == 3
    np.testing.assert_allclose(mean, [v.mean() for v in valid], rtol=1e-9)
    np.testing.assert_allclose(std, [v.std() for v in valid], rtol=1e-6)
    # A bounded sample: a regular grid of pixels, still close on this uniform noise.
    coarse, _, _ = band_statistics(dataset, max_images=2, max_pixels=64)
    np.testing.assert_allclose(coarse, mean, rtol=0.1)


def test_a_constant_band_gets_a_std_of_one(tmp_path: Path) -> None:
    image = np.stack([np.full((8, 8), 7, dtype=np.int16), np.arange(64, dtype=np.int16).reshape(8, 8) + 1])
    mean, std, _ = band_statistics(build_dataset(_coco(tmp_path, [image], nodata=None), "train"))
    assert mean[0] == 7.0 and std[0] == 1.0 and std[1] > 1.0


def test_eight_bit_rgb_keeps_the_configs_normalisation(tmp_path: Path) -> None:
    dataset = build_dataset(DataConfig(shapes=ShapesConfig(root=str(tmp_path), num_images=5, size=64)), "train")
    cfg = HARNetConfig(transform=TransformConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5)))
    resolved, note = resolve_input(cfg, dataset)
    assert note is None and resolved.input.is_rgb and resolved.transform == cfg.transform


def test_other_data_are_normalised_by_their_statistics_said_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    info = generate_band_shapes(tmp_path / "bands", num_images=8, size=32)
    data = DataConfig(format="coco", train_images=str(info["train_images"]), train_annotations=str(info["train_ann"]))
    dataset = build_dataset(data, "train")
    resolved, note = resolve_input(HARNetConfig(), dataset)
    mean, std, _ = band_statistics(dataset)
    assert resolved.input == InputConfig(4, None, "uint16")
    assert resolved.transform.image_mean == mean and resolved.transform.image_std == std
    assert note is not None and "\n" not in note and note.startswith("4 bands of uint16: transform.image_mean")
    assert "in place of the config's 3 values" in note and "nodata excluded" in note
    # A resumed run (its config already describes the data) keeps its numbers; so does 8-bit data with a value
    # per band.
    again, note = resolve_input(resolved, dataset)
    assert note is None and again.transform == resolved.transform
    data.bands = (4, 3, 2)
    chosen = build_dataset(data, "train")
    resolved, note = resolve_input(HARNetConfig(), chosen)
    assert resolved.input == InputConfig(3, (4, 3, 2), "uint16") and note is not None
    assert resolved.transform.image_mean == (mean[3], mean[2], mean[1])
