"""Where an export's metadata comes from (inside the model, the sidecar .json, or both: the embedded copy
wins), and hostile model files: each a one-line error naming the file, from the reader, the runtimes and
``harnet predict``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harnet.deploy import DeployedDetector
from harnet.deploy.metadata import METADATA_KEY, load_export_info, metadata_path, onnx_metadata_props
from harnet.deploy.runtime import OnnxRuntime, OpenVinoRuntime, open_runtime
from harnet.engine import checkpoint
from harnet.tools.cli import main as harnet_main
from harnet.tools.export import export_model
from tests_support import TINY, random_checkpoint

NAMES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny hybrid (aligned attention on C5) exported as ONNX, and as OpenVINO IR where openvino is installed."""
    root = tmp_path_factory.mktemp("runtime")
    path = random_checkpoint(root / "model.pt", [*TINY, "model.num_classes=3", "model.aligned.stages=[c5]"])
    model = checkpoint.build_model(checkpoint.load(path)).eval()
    export_model(model, root / "model.onnx", "onnx", NAMES, [1, 2, 3], verify=False)  # type: ignore[arg-type]
    try:
        import openvino  # noqa: F401

        export_model(model, root / "openvino", "openvino", NAMES, [1, 2, 3], verify=False)  # type: ignore[arg-type]
    except ImportError:
        pass
    return root


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((3, 48, 64), dtype=np.float32)


def _copy(source: Path, folder: Path, sidecar: bool) -> Path:
    folder.mkdir(exist_ok=True)
    shutil.copy(source, folder / source.name)
    if sidecar:
        shutil.copy(metadata_path(source), metadata_path(folder / source.name))
    return folder / source.name


def _strip_metadata(path: Path) -> None:
    """``path`` as an export from before the metadata was embedded."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))


def _deploy_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``harnet predict MODEL FOLDER`` with one readable image in FOLDER: the model's error, in one line."""
    from PIL import Image

    folder = Path(argv[1]) / "images"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48)).save(folder / "x.png")
    code = harnet_main(["predict", argv[0], str(folder), "--out", str(folder / "out")])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return code, err


def test_embedded_metadata_is_the_sidecar_and_what_onnx_reads(exports: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = exports / "model.onnx"
    props = onnx_metadata_props(path)
    assert props == {e.key: e.value for e in onnx.load(str(path)).metadata_props}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert props == session.get_modelmeta().custom_metadata_map
    assert props[METADATA_KEY] == metadata_path(path).read_text().rstrip("\n")
    assert json.loads(props[METADATA_KEY])["export_format"] == "onnx"


def test_embedded_only(exports: Path, tmp_path: Path, image: np.ndarray) -> None:
    path = _copy(exports / "model.onnx", tmp_path, sidecar=False)
    info = load_export_info(path)
    assert info.class_names == NAMES and info.category_ids == [1, 2, 3]
    (det,) = DeployedDetector(path, threads=1).predict([image])
    assert set(det) == {"boxes", "scores", "labels", "names"}


def test_sidecar_only_for_an_old_export(exports: Path, tmp_path: Path) -> None:
    path = _copy(exports / "model.onnx", tmp_path, sidecar=True)
    _strip_metadata(path)
    assert METADATA_KEY not in onnx_metadata_props(path)
    assert load_export_info(path).class_names == NAMES
    open_runtime(path, threads=1)


def test_embedded_wins_over_the_sidecar(exports: Path, tmp_path: Path) -> None:
    path = _copy(exports / "model.onnx", tmp_path, sidecar=True)
    sidecar = metadata_path(path)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "class_names": ["x", "y", "z"]}))
    assert load_export_info(path).class_names == NAMES
    assert load_export_info(sidecar).class_names == ["x", "y", "z"]  # the JSON itself, when asked for


def test_no_metadata_names_the_model(exports: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy(exports / "model.onnx", tmp_path, sidecar=False)
    _strip_metadata(path)
    with pytest.raises(FileNotFoundError, match=rf"{path}: no harnet export metadata.*model.onnx.json"):
        load_export_info(path)
    code, err = _deploy_error([str(path), str(tmp_path)], capsys)
    assert code == 1 and str(path) in err


@pytest.mark.parametrize("corruption", ["truncated", "random", "empty"])
def test_a_corrupt_onnx_is_one_line_naming_it(exports: Path, tmp_path: Path, corruption: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy(exports / "model.onnx", tmp_path, sidecar=True)  # the sidecar does not rescue a broken model
    data = {"truncated": path.read_bytes()[:1000], "empty": b"",
            "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()}[corruption]
    path.write_bytes(data)
    pattern = rf"{path}: (truncated or )?not an ONNX model"
    with pytest.raises(ValueError, match=pattern):
        load_export_info(path)
    with pytest.raises(ValueError, match=pattern):
        open_runtime(path)
    with pytest.raises(ValueError, match=pattern):
        OnnxRuntime(path)
    code, err = _deploy_error([str(path), str(tmp_path)], capsys)
    assert code == 1 and err.startswith(f"harnet: error: {path}: ")


def test_an_onnx_that_onnxruntime_refuses_is_one_line(exports: Path, tmp_path: Path) -> None:
    """A well-formed protobuf that is no runnable model gets past the metadata reader, not past the runtime."""
    onnx = pytest.importorskip("onnx")
    path = _copy(exports / "model.onnx", tmp_path, sidecar=False)
    model = onnx.load(str(path))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, str(path))
    assert load_export_info(path).class_names == NAMES
    with pytest.raises(ValueError, match=rf"{path}: onnxruntime cannot load the model \(.*NoSuchOp"):
        open_runtime(path)


def test_a_checkpoint_is_not_a_deployed_model(exports: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"model\.pt: a PyTorch checkpoint"):
        open_runtime(exports / "model.pt")


def test_openvino_metadata_embedded_and_a_missing_bin(exports: Path, tmp_path: Path, image: np.ndarray,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("openvino")
    folder = tmp_path / "ir"
    folder.mkdir()
    shutil.copy(exports / "openvino" / "model.xml", folder)
    shutil.copy(exports / "openvino" / "model.bin", folder)
    assert load_export_info(folder).class_names == NAMES  # no sidecar: the IR's rt_info
    assert load_export_info(folder).info["export_format"] == "openvino"
    assert DeployedDetector(folder, threads=1).predict([image])[0]["boxes"].shape[1] == 4
    (folder / "model.bin").unlink()
    for opener in (lambda: open_runtime(folder), lambda: OpenVinoRuntime(folder / "model.xml")):
        with pytest.raises(FileNotFoundError, match=rf"{folder / 'model.xml'}: its weights model.bin are missing"):
            opener()
    code, err = _deploy_error([str(folder), str(tmp_path)], capsys)
    assert code == 1 and "model.bin" in err
    (folder / "model.xml").write_text("<net><layers>")
    with pytest.raises(ValueError, match=rf"{folder / 'model.xml'}: not an OpenVINO IR"):
        load_export_info(folder)


def test_an_ir_converted_from_the_onnx_keeps_its_metadata(exports: Path, tmp_path: Path) -> None:
    """OpenVINO's converter copies the ONNX metadata into the IR (rt_info/framework): such an IR needs no
    sidecar either."""
    ov = pytest.importorskip("openvino")
    portable = tmp_path / "portable.onnx"
    model = checkpoint.build_model(checkpoint.load(exports / "model.pt")).eval()
    export_model(model, portable, "onnx", NAMES, [1, 2, 3], verify=False, portable=True)  # type: ignore[arg-type]
    ov.save_model(ov.convert_model(str(portable)), str(tmp_path / "converted.xml"))
    assert load_export_info(tmp_path / "converted.xml").info["deform_conv"].startswith("GridSample")
