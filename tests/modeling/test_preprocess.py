"""The model's image geometry: torchvision's transform exactly, nodata (NaN) normalised to 0, channels checked."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from harnet.config.model import BackboneConfig, HARNetConfig, InputConfig, LossConfig, TransformConfig
from harnet.modeling.harnet import HARNet
from harnet.modeling.preprocess import build_transform, preprocess
from harnet.modeling.torchvision_peer import build_torchvision_retinanet


@pytest.mark.parametrize("training", [True, False])
def test_without_nodata_it_is_torchvisions_transform_bit_for_bit(training: bool) -> None:
    cfg = TransformConfig(min_size=(96,), max_size=160)
    images = [torch.rand(3, 70, 120, generator=torch.Generator().manual_seed(0)), torch.rand(3, 90, 50)]
    ours = build_transform(cfg, training)(images)[0].tensors
    reference = GeneralizedRCNNTransform((96,), 160, list(cfg.image_mean), list(cfg.image_std)).train(training)
    torch.manual_seed(0)
    assert torch.equal(ours, reference(images)[0].tensors)


def test_nodata_pixels_are_normalised_to_zero_before_the_resize() -> None:
    """A NaN pixel becomes 0 (its band's mean) and the resize never spreads NaN: the same batch as filling the
    pixel with the mean."""
    cfg = TransformConfig(min_size=(64,), max_size=64, image_mean=(100.0, 200.0, 300.0, 400.0),
                          image_std=(10.0, 20.0, 30.0, 40.0))
    image = torch.rand(4, 40, 40) * 50 + 100
    with_nodata = image.clone()
    with_nodata[:, :10] = float("nan")
    filled = image.clone()
    filled[:, :10] = torch.tensor(cfg.image_mean)[:, None, None]
    batch, _ = preprocess(cfg, [with_nodata], training=False)
    assert torch.isfinite(batch.tensors).all()
    assert torch.equal(batch.tensors, preprocess(cfg, [filled], training=False)[0].tensors)


def test_images_with_another_channel_count_are_one_line_errors() -> None:
    cfg = HARNetConfig(num_classes=2, transform=TransformConfig(min_size=(64,), max_size=64))
    model = HARNet(cfg).eval()
    with pytest.raises(ValueError, match=r"image has 4 channel\(s\), the model reads 3"):
        model([torch.rand(4, 64, 64)])


def test_the_torchvision_peer_reads_four_bands_with_the_same_nodata_rule() -> None:
    mean, std = (100.0, 200.0, 300.0, 400.0), (10.0, 20.0, 30.0, 40.0)
    cfg = HARNetConfig.preset("retinanet", num_classes=2, input=InputConfig(4, None, "uint16"),
                              transform=TransformConfig(min_size=(64,), max_size=64, image_mean=mean, image_std=std),
                              backbone=BackboneConfig("resnet18", weights=None),
                              loss=LossConfig(smooth_l1_beta=1.0))
    peer = build_torchvision_retinanet(cfg).eval()
    image = torch.rand(4, 64, 64) * 50 + 100
    image[:, :8] = float("nan")
    with torch.no_grad():
        out = peer([image])
    assert torch.isfinite(out[0]["scores"]).all()
