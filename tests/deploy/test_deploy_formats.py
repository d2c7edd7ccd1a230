"""The export formats table: names, default files, precision/portable combinations, and which runtime a
model path needs; all of it without torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harnet.deploy.formats import (
    BENCH_FORMATS,
    CHECKPOINT,
    EXPORT_FORMATS,
    export_format,
    parse_bench_formats,
    runtime_for,
)


def test_rows_default_files_and_runtimes() -> None:
    assert BENCH_FORMATS == (CHECKPOINT, "onnx", "onnx-fp16", "onnx-int8", "openvino")
    names = {f.name: f.default_name() for f in EXPORT_FORMATS.values()}
    assert names == {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
                     "openvino": "openvino", "torchscript": "model.torchscript.pt"}
    assert EXPORT_FORMATS["onnx-int8"].default_name(portable=True) == "model.int8.portable.onnx"
    assert EXPORT_FORMATS["openvino"].default_name(portable=True) == "openvino"  # always portable: no tag
    assert EXPORT_FORMATS["openvino"].model_file("out/ov") == Path("out/ov/model.xml")
    assert EXPORT_FORMATS["onnx"].model_file("a.onnx") == Path("a.onnx")
    assert {f.name: f.runtime for f in EXPORT_FORMATS.values()} == {
        "onnx": "onnxruntime", "onnx-fp16": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino",
        "torchscript": "torch"}
    assert EXPORT_FORMATS["openvino"].is_portable(False) and not EXPORT_FORMATS["onnx"].is_portable(False)
    with pytest.raises(ValueError, match="torchscript has no portable variant"):
        EXPORT_FORMATS["torchscript"].is_portable(True)


def test_format_and_precision_combinations() -> None:
    assert export_format("onnx").name == "onnx"
    assert export_format("onnx", "int8").name == "onnx-int8"
    assert export_format("onnx", "fp16").name == "onnx-fp16"
    assert export_format("onnx-int8", "int8").name == "onnx-int8"
    assert export_format("openvino", "fp32").name == "openvino"
    with pytest.raises(ValueError, match=r"--int8 needs --format onnx \(--format openvino has no int8\)"):
        export_format("openvino", "int8")
    with pytest.raises(ValueError, match="onnx-int8 is int8 already; --fp16"):
        export_format("onnx-int8", "fp16")
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_format("tflite")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        export_format("onnx", "int4")


def test_bench_formats_parse() -> None:
    assert parse_bench_formats("torch, onnx-int8") == ["torch", "onnx-int8"]
    for bad in ("onnx,bogus", "torchscript", "", "onnx,onnx"):
        with pytest.raises(ValueError):
            parse_bench_formats(bad)


def test_runtime_for_a_path(tmp_path: Path) -> None:
    for name in ("a.onnx", "b.xml", "c.pt", "d.torchscript.pt", "e.txt"):
        (tmp_path / name).write_bytes(b"")
    assert runtime_for(tmp_path / "a.onnx") == "onnxruntime"
    assert runtime_for(tmp_path / "b.xml") == "openvino"
    assert runtime_for(tmp_path / "c.pt") == runtime_for(tmp_path / "d.torchscript.pt") == "torch"
    ir, run = tmp_path / "ir", tmp_path / "run"
    ir.mkdir()
    run.mkdir()
    (ir / "model.xml").write_text("")
    (run / "best.pt").write_bytes(b"")
    assert runtime_for(ir) == "openvino" and runtime_for(run) == "torch"
    with pytest.raises(ValueError, match=r"e\.txt: not a model file"):
        runtime_for(tmp_path / "e.txt")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx: model file not found"):
        runtime_for(tmp_path / "missing.onnx")
    (ir / "other.xml").write_text("")
    with pytest.raises(ValueError, match="2 OpenVINO .xml models in the folder"):
        runtime_for(ir)


def test_deploy_imports_without_torch() -> None:
    """The table, the metadata reader and the runtimes are what a device without torch imports."""
    code = ("import sys; sys.modules.update(torch=None, torchvision=None); import harnet.deploy, "
            "harnet.deploy.formats, harnet.deploy.metadata, harnet.deploy.runtime, harnet.deploy.run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
