"""Export: ONNX (onnxruntime on the CPU) and TorchScript give PyTorch's raw outputs, and our
post-processing of them gives PyTorch's detections; with every attention on, deformable conv included."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harnet.deploy.metadata import ExportInfo
from harnet.deploy.predictor import Predictor, postprocess_raw
from harnet.deploy.preprocess import Batch, preprocess
from harnet.engine import checkpoint
from harnet.modeling.anchors import build_anchor_generator
from harnet.modeling.harnet import HARNet
from harnet.modeling.pyramid import level_shapes
from harnet.tools.cli import main
from harnet.tools.export import RawNetwork, export_model, load_metadata
from tests_support import TINY, random_checkpoint

# Every attention: hybrid (spatial, channel, dual prediction) with aligned attention on C4 and C5,
# and the paper's test recipe (Soft-NMS, box voting) in the post-processing.
ALL_ATTENTIONS = [*TINY, "model.num_classes=6", "model.aligned.stages=[c4, c5]",
                  "model.inference={nms: soft_nms, box_voting_iou: 0.6}"]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("export") / "model.pt", ALL_ATTENTIONS)


@pytest.fixture(scope="module")
def model(ckpt_path: Path) -> HARNet:
    return checkpoint.build_model(checkpoint.load(ckpt_path)).eval()


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 80, generator=g), torch.rand(3, 50, 70, generator=g)]


def _assert_same_detections(got: list[dict], expected: list[dict[str, torch.Tensor]]) -> None:
    """The numpy pipeline's detections against the torch model's own (float rounding of pre-processing and
    decoding apart: boxes within 1e-3 px, scores within 1e-4)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert len(b["scores"]) > 10  # the comparison means something
        np.testing.assert_array_equal(a["labels"], b["labels"].numpy())
        np.testing.assert_allclose(a["scores"], b["scores"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(a["boxes"], b["boxes"].numpy(), atol=1e-3, rtol=0)


def _numpy_batch(images: list[torch.Tensor], model: HARNet) -> Batch:
    return preprocess([im.numpy() for im in images], model.config.transform)


def _info(config: object) -> ExportInfo:
    return ExportInfo(config, [f"class{i}" for i in range(6)], list(range(1, 7)), {})  # type: ignore[arg-type]


def _decoded(logits: torch.Tensor, deltas: torch.Tensor, batch: Batch, config: object) -> list[dict]:
    return postprocess_raw(np.asarray(logits), np.asarray(deltas), batch, _info(config))


def test_level_shapes_match_the_feature_maps(model: HARNet) -> None:
    with torch.no_grad():
        for h, w in [(64, 64), (96, 160), (32, 224)]:
            features = model.features(torch.zeros(1, 3, h, w))
            assert level_shapes(h, w) == [tuple(f.shape[-2:]) for f in features]


@pytest.mark.slow
def test_raw_outputs_plus_postprocess_raw_equal_the_model(model: HARNet) -> None:
    """The prediction pipeline around the exported graph's torch twin: numpy preprocess -> network ->
    numpy postprocess_raw gives the model's own detections."""
    images = _images()
    batch = _numpy_batch(images, model)
    with torch.no_grad():
        logits, deltas = RawNetwork(model)(torch.from_numpy(batch.images))
        expected = model(images)
    _assert_same_detections(_decoded(logits, deltas, batch, model.config), expected)
    with pytest.raises(ValueError, match="do not fit"):
        _decoded(logits[:, :-6], deltas[:, :-6], batch, model.config)


@pytest.mark.slow
def test_onnx_runtime_equals_pytorch(ckpt_path: Path, model: HARNet, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    assert main(["export", str(ckpt_path), "--format", "onnx", "--out", str(out)]) == 0
    assert "max |exported - PyTorch|" in capsys.readouterr().out
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "DeformConv" in ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # Dynamic batch, height and width: none of these is the export example's shape.
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64), (1, 3, 128, 128)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            expected = RawNetwork(model)(x)
        got = session.run(None, {"images": x.numpy()})
        for g, e in zip(got, expected):
            assert g.shape == tuple(e.shape)
            assert float((torch.from_numpy(g) - e).abs().max()) < 1e-4
    images = _images()
    with torch.no_grad():
        expected_dets = model(images)
    _assert_same_detections(Predictor.from_export(out, threads=1).predict([im.numpy() for im in images]),
                            expected_dets)
    meta = load_metadata(out)
    assert meta.config == model.config and meta.class_names == ["class0", "class1", "class2", "class3",
                                                                "class4", "class5"]
    assert json.loads((tmp_path / "model.onnx.json").read_text())["opset"] == 19
    # The same metadata inside the model: the file alone is enough.
    embedded = {e.key: e.value for e in onnx.load(str(out)).metadata_props}["harnet"]
    assert embedded == (tmp_path / "model.onnx.json").read_text().rstrip("\n")
    (tmp_path / "model.onnx.json").unlink()
    assert load_metadata(out).config == model.config


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notice
def test_torchscript_equals_pytorch(model: HARNet, tmp_path: Path) -> None:
    out = tmp_path / "model.torchscript.pt"
    result = export_model(model, out, "torchscript", ["a"] * 6, list(range(1, 7)))
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    extra = {"harnet.json": ""}
    traced = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["harnet.json"])["model"]["aligned"]["stages"] == ["c4", "c5"]
    result.metadata_path.unlink()  # read from the archive, without torch
    assert load_metadata(out).config == model.config and load_metadata(out).info["export_format"] == "torchscript"
    images = _images()
    batch = _numpy_batch(images, model)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        logits, deltas = traced(torch.from_numpy(batch.images))
        expected = model(images)
    _assert_same_detections(_decoded(logits, deltas, batch, model.config), expected)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HARNET_TEST_DYNAMO"), reason="1-2 min on 2 CPU cores; set HARNET_TEST_DYNAMO=1")
def test_dynamo_exporter(model: HARNet, tmp_path: Path) -> None:
    """torch.export-based ONNX (needs torch >= 2.6 and onnxscript, which the test extra leaves out)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    result = export_model(model, tmp_path / "model.onnx", "onnx", ["a"] * 6, list(range(1, 7)), exporter="dynamo")
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4


def test_export_of_a_missing_checkpoint_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "/nonexistent.pt"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--int8", "--calib", "EMPTY"], "--calib EMPTY: no images there"),
    (["--int8"], "int8 export needs calibration images: --calib"),
    (["--int8", "--fp16"], "--int8 and --fp16 exclude each other"),
    (["--int8", "--format", "openvino", "--calib", "EMPTY"], "--int8 needs --format onnx"),
    (["--fp16", "--format", "onnx-int8"], "--format onnx-int8 is int8 already; --fp16"),
    (["--format", "torchscript", "--portable"], "--format torchscript has no portable variant"),
    (["--calib", "EMPTY"], "--calib is for int8 exports"),
    (["--format", "onnx-fp16", "--float-parts", "deform"], "--float-parts is for int8 exports"),
])
def test_export_options_are_checked_against_the_formats_table(
        ckpt_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """Every refusal is a usage error (status 2, one line) before the checkpoint is exported."""
    (tmp_path / "EMPTY").mkdir()  # the tests run in tmp_path
    (tmp_path / "EMPTY" / "notes.txt").write_text("not an image")
    assert main(["export", str(ckpt_path), "--out", str(tmp_path / "out.onnx"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harnet: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_int8_export_without_calibration_fails_before_exporting(model: HARNet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int8 export needs calibration images"):
        export_model(model, tmp_path / "m.onnx", "onnx-int8", ["a"] * 6, list(range(1, 7)))
    with pytest.raises(ValueError, match=r"unknown float parts \['head'\]"):
        export_model(model, tmp_path / "m.onnx", "onnx", ["a"] * 6, list(range(1, 7)), precision="int8",
                     calibration=_images(), float_parts=["head"])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_int8_cli_writes_the_default_file_beside_the_checkpoint(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--format onnx-int8`` (what ``--int8`` means) -> RUN/model.int8.onnx, its metadata inside."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    run = tmp_path / "run"
    ckpt = random_checkpoint(run / "best.pt", [*TINY, "model.num_classes=2", "model.aligned.stages=[c5]"])
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(calib / f"{i}.png")
    assert main(["export", str(run), "--format", "onnx-int8", "--calib", str(calib)]) == 0
    assert "metadata inside it" in capsys.readouterr().out
    out = ckpt.parent / "model.int8.onnx"
    (ckpt.parent / "model.int8.onnx.json").unlink()
    info = load_metadata(out).info
    assert info["export_format"] == "onnx-int8" and info["precision"]["calibration_images"] == 2


@pytest.mark.parametrize("stride_mode", ["level", "torchvision"])
def test_deployment_path_follows_the_test_sizes_and_anchor_rule(model: HARNet, stride_mode: str) -> None:
    """With test sizes unlike the training ones and a padded size that is no multiple of 128 (where the two
    anchor rules differ), the pipeline's numpy preprocess is the model's and postprocess_raw's anchors, built
    from the padded size alone, decode to the model's detections."""
    test_model = copy.deepcopy(model)
    cfg = test_model.config
    cfg.transform.test_min_size, cfg.transform.test_max_size = 80, 100
    cfg.anchors = replace(cfg.anchors, stride_mode=stride_mode)
    test_model.anchor_generator = build_anchor_generator(cfg.anchors)
    images = _images()
    batch = _numpy_batch(images, test_model)
    image_list, _ = test_model.preprocess(images)
    assert batch.image_sizes == image_list.image_sizes == [(80, 100), (71, 100)]
    # float32 source positions of the bilinear resize may differ in the last bit between numpy and torch: a
    # weight off by ~1e-7 times a pixel step of up to 1, divided by std >= 0.2, so 1e-4 on normalised pixels
    np.testing.assert_allclose(batch.images, image_list.tensors.numpy(), atol=1e-4, rtol=0)
    assert batch.images.shape[-2:] == (96, 128)
    with torch.no_grad():
        logits, deltas = RawNetwork(test_model)(torch.from_numpy(batch.images))
        expected = test_model(images)
    _assert_same_detections(_decoded(logits, deltas, batch, cfg), expected)


def test_export_refuses_an_efficientnet_body_whose_batches_are_not_multiples_of_32(tmp_path: Path) -> None:
    """EfficientNet-Lite's stride-2 convs are exported with the padding of even sizes: a size_divisible that
    lets a stage see odd sizes would export a different network, so export says so instead."""
    pytest.importorskip("timm")
    path = random_checkpoint(tmp_path / "lite.pt", [
        *TINY, "model.backbone={name: efficientnet_lite0, norm: bn, trainable_layers: 5, weights: null}",
        "model.transform.size_divisible=16"])
    model = checkpoint.build_model(checkpoint.load(path)).eval()
    with pytest.raises(ValueError, match="size_divisible is 16: exporting an EfficientNet-Lite body needs"):
        export_model(model, tmp_path / "lite.onnx", "onnx", ["a"], [1], verify=False)
