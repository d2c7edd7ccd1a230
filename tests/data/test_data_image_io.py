"""Every PIL mode a dataset may meet decodes to 3-channel float32 in [0, 1], with the right values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harnet.data.image_io import image_size, load_image


def _check(path: Path, height: int, width: int) -> torch.Tensor:
    image = load_image(path)
    assert image.shape == (3, height, width) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    return image.as_subclass(torch.Tensor)


def test_grayscale_and_binary(tmp_path: Path) -> None:
    Image.new("L", (5, 4), 128).save(tmp_path / "l.png")
    image = _check(tmp_path / "l.png", 4, 5)
    torch.testing.assert_close(image, torch.full((3, 4, 5), 128 / 255))
    Image.new("1", (5, 4), 1).save(tmp_path / "one.png")
    torch.testing.assert_close(_check(tmp_path / "one.png", 4, 5), torch.ones(3, 4, 5))


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (255, 0, 0, 255)  # opaque red
    pixels[0, 1] = (0, 0, 0, 0)  # fully transparent, undefined colour
    Image.fromarray(pixels).save(tmp_path / "rgba.png")
    image = _check(tmp_path / "rgba.png", 2, 2)
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert image[:, 0, 1].tolist() == [1.0, 1.0, 1.0]


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 1)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert _check(tmp_path / "p.png", 3, 3)[:, 1, 1].tolist() == [0.0, 1.0, 0.0]
    image.save(tmp_path / "pt.png", transparency=1)
    assert _check(tmp_path / "pt.png", 3, 3)[:, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_16_bit_grayscale_is_rescaled_not_clipped(tmp_path: Path) -> None:
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = _check(tmp_path / "g16.png", 1, 3)
    np.testing.assert_allclose(image[0, 0].numpy(), [0.0, 32768 / 65535, 1.0], atol=1e-6)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = _check(tmp_path / "cmyk.jpg", 8, 8)[:, 4, 4]
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (6, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert image_size(tmp_path / "rot.jpg") == (4, 6)
    _check(tmp_path / "rot.jpg", 6, 4)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")
