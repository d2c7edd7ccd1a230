"""Test-time augmentation: box flipping is exact, one unflipped view at scale 1 is the plain model,
the merge is mirror-consistent, and TTA runs through eval/predict with the model's output format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harnet.engine import checkpoint
from harnet.engine.tta import TTAConfig, flip_boxes, tta_predict
from harnet.modeling.harnet import HARNet
from harnet.tools.cli import main
from tests_support import TINY, random_checkpoint


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> HARNet:
    path = random_checkpoint(tmp_path_factory.mktemp("tta") / "model.pt", [*TINY, "model.num_classes=4"])
    return checkpoint.build_model(checkpoint.load(path)).eval()


def _image(h: int = 64, w: int = 80, seed: int = 3) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def test_flip_boxes_mirrors_the_pixels_and_is_its_own_inverse() -> None:
    image = torch.zeros(1, 20, 30)
    image[0, 4:9, 3:11] = 1  # pixels x 3..10 -> box x0 3, x1 11 (XYXY, exclusive right edge)
    box = torch.tensor([[3.0, 4.0, 11.0, 9.0]])
    ys, xs = torch.where(image.flip(-1)[0] > 0)
    mirrored = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    torch.testing.assert_close(flip_boxes(box, 30), mirrored)
    torch.testing.assert_close(flip_boxes(flip_boxes(box, 30), 30), box)


def test_one_plain_view_is_the_model_itself(model: HARNet) -> None:
    images = [_image(), _image(50, 70, seed=4)]
    with torch.no_grad():
        expected = model(images)
    got = tta_predict(model, images, TTAConfig(scales=(1.0,), flip=False, merge="model"))
    for a, b in zip(got, expected):
        assert len(b["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(a[key], b[key])


@pytest.mark.slow
def test_output_format_equals_the_models(model: HARNet) -> None:
    image = _image()
    with torch.no_grad():
        (plain,) = model([image])
    (augmented,) = tta_predict(model, [image])
    assert set(augmented) == set(plain)
    for key in plain:
        assert augmented[key].dtype == plain[key].dtype and augmented[key].shape[1:] == plain[key].shape[1:]
    assert len(augmented["scores"]) <= model.config.inference.detections_per_img
    boxes = augmented["boxes"]
    assert bool((boxes[:, 0] >= 0).all() and (boxes[:, 2] <= image.shape[-1]).all())
    assert bool((augmented["scores"][:-1] >= augmented["scores"][1:]).all())


@pytest.mark.slow
def test_mirrored_image_gives_mirrored_detections(model: HARNet) -> None:
    """With flip, an image and its mirror image have the same set of views, so the merged
    detections of the mirror, flipped back, are the original's: the flip mapping is consistent."""
    image = _image()
    cfg = TTAConfig(scales=(1.0, 1.5))
    (original,) = tta_predict(model, [image], cfg)
    (mirror,) = tta_predict(model, [image.flip(-1)], cfg)
    assert len(original["scores"]) > 0
    torch.testing.assert_close(mirror["scores"], original["scores"], atol=1e-5, rtol=0)
    assert torch.equal(mirror["labels"], original["labels"])
    torch.testing.assert_close(flip_boxes(mirror["boxes"], image.shape[-1]), original["boxes"], atol=1e-3, rtol=0)


def test_bad_scales_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        TTAConfig(scales=(1.0, 0.0))


@pytest.mark.slow
def test_eval_and_predict_with_tta(trained_run: Path, shapes_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(trained_run), "--out", str(tmp_path / "eval"), "--tta"]) == 0
    assert "AP" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] > 0
    image = sorted((shapes_root / "val").glob("*.png"))[0]
    out = tmp_path / "pred"
    assert main(["predict", str(trained_run), str(image), "--out", str(out), "--score", "0",
                 "--tta-scales", "1", "1.5"]) == 0
    assert (out / f"{image.stem}_pred.png").is_file()
    assert main(["eval", str(trained_run), "--tta-scales", "-1"]) == 2


def test_the_pipeline_tta_equals_the_torch_tta(model: HARNet) -> None:
    """Prediction's TTA (numpy, any backend: harnet.deploy.predictor) and training evaluation's (torch,
    engine/tta.py) are the same recipe: the same detections up to float rounding of pre-processing."""
    import numpy as np

    from harnet.deploy.predictor import Predictor
    from harnet.engine.torch_runtime import TorchRuntime, checkpoint_info

    config = TTAConfig(scales=(1.0, 1.25), flip=True)
    images = [_image(), _image(50, 70, seed=4)]
    expected = tta_predict(model, images, config)
    info = checkpoint_info(model.config, [str(i) for i in range(4)], [1, 2, 3, 4])
    predictor = Predictor(TorchRuntime(model), info, tta=config)
    for image, exp in zip(images, expected):
        (got,) = predictor.predict([image.numpy()])
        assert len(exp["scores"]) > 5
        np.testing.assert_array_equal(got["labels"], exp["labels"].numpy())
        np.testing.assert_allclose(got["scores"], exp["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(got["boxes"], exp["boxes"].numpy(), atol=1e-3)
