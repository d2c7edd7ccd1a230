"""End to end on a tiny exported model: harnet.deploy (numpy + onnxruntime/OpenVINO) gives PyTorch's
detections, runs in a process where torch cannot be imported, and the int8, portable and OpenVINO
exports keep any input size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harnet.deploy import DeployedDetector, Predictor
from harnet.engine import checkpoint
from harnet.modeling.harnet import HARNet
from harnet.tools.export import RawNetwork, export_model
from tests_support import TINY, random_checkpoint

ALL_ATTENTIONS = [*TINY, "model.num_classes=6", "model.aligned.stages=[c4, c5]",
                  "model.inference={nms: soft_nms, box_voting_iou: 0.6}"]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("deploy") / "model.pt", ALL_ATTENTIONS)


@pytest.fixture(scope="module")
def model(ckpt_path: Path) -> HARNet:
    return checkpoint.build_model(checkpoint.load(ckpt_path)).eval()  # type: ignore[return-value]


def _images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 64, 80, generator=g), torch.rand(3, 50, 70, generator=g)]


def _export(model: HARNet, path: Path, fmt: str = "onnx", **kwargs: object) -> Path:
    names = [f"class{i}" for i in range(6)]
    return export_model(model, path, fmt, names, list(range(1, 7)), verify=False, **kwargs).path  # type: ignore[arg-type]


def _assert_network_matches(model: HARNet, detector: Predictor, atol: float, rtol: float = 1e-7) -> None:
    """The exported network's raw outputs against PyTorch's, on two batch sizes and aspect ratios."""
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = RawNetwork(model)(x)
        for got, exp in zip(detector.runtime.run(x.numpy()), expected):
            assert got.shape == tuple(exp.shape)
            np.testing.assert_allclose(got, exp.numpy(), atol=atol, rtol=rtol)


def test_deploy_gives_pytorch_detections(model: HARNet, tmp_path: Path) -> None:
    path = _export(model, tmp_path / "model.onnx")
    detector = DeployedDetector(path, threads=1)
    images = _images()
    with torch.no_grad():
        expected = model(images)
    for got, exp in zip(detector.predict([im.numpy() for im in images]), expected):
        assert len(exp["scores"]) > 10
        np.testing.assert_array_equal(got["labels"], exp["labels"].numpy())
        np.testing.assert_allclose(got["scores"], exp["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(got["boxes"], exp["boxes"].numpy(), atol=1e-3)


@pytest.mark.parametrize("fmt", ["onnx-portable", "openvino"])
def test_portable_exports_match_pytorch(model: HARNet, tmp_path: Path, fmt: str) -> None:
    if fmt == "openvino":
        pytest.importorskip("openvino")
        path = _export(model, tmp_path / "ov", "openvino")
    else:
        path = _export(model, tmp_path / "portable.onnx", portable=True)
        import onnx

        assert "DeformConv" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    _assert_network_matches(model, DeployedDetector(path, threads=1), atol=1e-3)


def test_int8_export_keeps_any_size(model: HARNet, tmp_path: Path) -> None:
    path = _export(model, tmp_path / "model.int8.onnx", precision="int8", calibration=_images())
    info = json.loads(Path(str(path) + ".json").read_text())["precision"]
    assert info["precision"] == "int8" and any("DeformConv" in n for n in info["float_nodes"])
    detector = DeployedDetector(path, threads=1)
    for shape in [(1, 3, 64, 96), (2, 3, 160, 128)]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = RawNetwork(model)(x)
        logits, deltas = detector.runtime.run(x.numpy())
        assert logits.shape == tuple(expected[0].shape) and deltas.shape == tuple(expected[1].shape)


def test_fp16_export_matches_pytorch_within_half_precision(model: HARNet, tmp_path: Path) -> None:
    """--fp16: fp16 weights and activations, fp32 inputs/outputs, DeformConv kept in fp32; any size; outputs
    within half precision of PyTorch's."""
    import onnx

    path = _export(model, tmp_path / "model.fp16.onnx", precision="fp16")
    graph = onnx.load(str(path)).graph
    assert all(t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for t in [*graph.input, *graph.output])
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    info = json.loads(Path(str(path) + ".json").read_text())["precision"]
    assert info["precision"] == "fp16" and info["float32_ops"] == ["DeformConv"]
    _assert_network_matches(model, DeployedDetector(path, threads=1), atol=0.05, rtol=0.01)


NO_TORCH = ("import sys; sys.modules.update(torch=None, torchvision=None, timm=None); "
            "from harnet.tools.cli import main; sys.exit(main(sys.argv[1:]))")


def _without_torch(*argv: str) -> subprocess.CompletedProcess[str]:
    """``harnet ARGV`` in a process where importing torch fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", NO_TORCH, *argv], env=env, capture_output=True, text=True,
                          timeout=300)


def _same_detections(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (a["file_name"], a["category_id"], a["category_name"]) == (b["file_name"], b["category_id"],
                                                                          b["category_name"])
        assert abs(a["score"] - b["score"]) < 1e-4
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)


def test_predict_without_torch_matches_the_checkpoint(ckpt_path: Path, model: HARNet, tmp_path: Path) -> None:
    """``harnet predict model.onnx`` in a process where torch cannot be imported writes the detections.json of
    ``harnet predict model.pt``; a command that needs torch says so in one line (exit 2)."""
    from harnet.tools.cli import main

    path = _export(model, tmp_path / "model.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_images()):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    done = _without_torch("predict", str(path), str(folder), "--out", str(tmp_path / "np"), "--score", "0.2",
                          "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(ckpt_path), str(folder), "--out", str(tmp_path / "pt"), "--score", "0.2"]) == 0
    expected = json.loads((tmp_path / "pt" / "detections.json").read_text())
    assert len(expected) > 5
    _same_detections(json.loads((tmp_path / "np" / "detections.json").read_text()), expected)
    assert (tmp_path / "np" / "0_pred.png").is_file()
    refused = _without_torch("train", "--config", "demo")
    assert refused.returncode == 2 and "needs PyTorch" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_tiled_geotiff_without_torch_matches_the_checkpoint(ckpt_path: Path, model: HARNet, tmp_path: Path) -> None:
    """--tile on a GeoTIFF: the exported model without torch writes the checkpoint's detections and maps."""
    rasterio = pytest.importorskip("rasterio")
    gpd = pytest.importorskip("geopandas")
    from rasterio.transform import from_origin

    from harnet.tools.cli import main

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 150, 210), dtype=np.uint8)
    tif = tmp_path / "ortho.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=210, height=150, count=3, dtype="uint8", crs="EPSG:32611",
                       transform=from_origin(500000, 4000000, 0.1, 0.1)) as ds:
        ds.write(data)
    path = _export(model, tmp_path / "model.onnx")
    args = [str(tif), "--tile", "96", "--overlap", "0.25", "--score", "0.2", "--no-progress"]
    done = _without_torch("predict", str(path), *args, "--out", str(tmp_path / "np"), "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert main(["predict", str(ckpt_path), *args, "--out", str(tmp_path / "pt")]) == 0
    expected = json.loads((tmp_path / "pt" / "detections.json").read_text())
    assert expected
    _same_detections(json.loads((tmp_path / "np" / "detections.json").read_text()), expected)
    got, want = gpd.read_file(tmp_path / "np" / "ortho.gpkg"), gpd.read_file(tmp_path / "pt" / "ortho.gpkg")
    assert got.crs == want.crs and len(got) == len(want) == len(expected)
    assert (tmp_path / "np" / "ortho.geojson").is_file()


def test_video_without_torch_writes_one_line_per_frame(model: HARNet, tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(3):
            rgb = np.zeros((64, 64, 3), np.uint8)
            rgb[10 + i : 40 + i, 12:44] = (200, 40, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path = _export(model, tmp_path / "model.onnx")
    done = _without_torch("predict", str(path), str(clip), "--out", str(tmp_path / "out"), "--threads", "1")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip_detections.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == [0, 1, 2]
