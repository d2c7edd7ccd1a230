"""The two inference runtimes a device may have, behind one call: ``run(images) -> (logits, deltas)``.

ONNX Runtime runs ``.onnx`` files (fp32, fp16 or int8 QDQ); OpenVINO runs its IR (``.xml`` + ``.bin``)
and, being able to read ONNX too, a portable ``.onnx`` (one without ``DeformConv``). Both are
imported only when asked for, so a device needs just the one it uses. A model a runtime cannot load
(truncated, not a model, an IR without its weights) is a one-line ``ValueError`` naming the file, and a
runtime that is not installed a ``RuntimeError`` saying what to install.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from harnet.deploy.formats import model_file, runtime_for
from harnet.deploy.metadata import onnx_metadata_props
from harnet.utils.errors import one_line

Backend = Literal["auto", "onnxruntime", "openvino"]


class Runtime(Protocol):
    name: str

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"{module} is not installed: pip install {module}") from None


class OnnxRuntime:
    """An onnxruntime CPU session; ``threads`` sets its intra-op thread pool (None: onnxruntime's default).

    ``spin=False`` lets the pool's threads sleep as soon as a run ends. onnxruntime's default keeps them
    spinning for a while, the fastest for back-to-back runs, but whatever runs between two runs (the
    pipeline's numpy decoding and suppression, another session, torch) then competes with spinning threads
    for the cores; the prediction pipeline and the benchmarks that interleave turn it off."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True) -> None:
        ort = _import("onnxruntime")
        onnx_metadata_props(path)  # a truncated or non-ONNX file: a ValueError naming it, before onnxruntime's own
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's load errors have no common base class
            raise ValueError(f"{path}: onnxruntime cannot load the model ({one_line(e)})") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, deltas = self.session.run(["cls_logits", "box_deltas"], {self.input_name: images})
        return np.asarray(logits, dtype=np.float32), np.asarray(deltas, dtype=np.float32)


class OpenVinoRuntime:
    """An OpenVINO model compiled for the CPU; ``threads`` sets ``INFERENCE_NUM_THREADS``. Inference runs
    in f32: on CPUs with bf16 units OpenVINO otherwise picks bf16, which moves logits by ~1e-2."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        ov = _import("openvino")
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").is_file():
            raise FileNotFoundError(f"{path}: its weights {path.with_suffix('.bin').name} are missing beside it "
                                    "(an OpenVINO IR is the .xml and the .bin together)")
        if path.suffix.lower() == ".onnx":
            onnx_metadata_props(path)  # as OnnxRuntime: a corrupt file named before OpenVINO's long message
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError or its own classes, messages over many lines
            raise ValueError(f"{path}: OpenVINO cannot load the model ({one_line(e)})") from None
        self.request = self.compiled.create_infer_request()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({0: images})
        by_name = {next(iter(k.get_names())): v for k, v in result.items()}
        return (np.asarray(by_name["cls_logits"], dtype=np.float32),
                np.asarray(by_name["box_deltas"], dtype=np.float32))


def deploy_runtime(path: str | Path) -> Backend:
    """The runtime that runs the model at ``path`` here (:func:`~harnet.deploy.formats.runtime_for`); a model
    that needs torch is a ``ValueError`` naming it."""
    runtime = runtime_for(path)
    if runtime == "torch":
        what = "no OpenVINO .xml in this folder" if Path(path).is_dir() else "a PyTorch checkpoint or TorchScript"
        raise ValueError(f"{path}: {what}; harnet.deploy runs exported .onnx or OpenVINO models "
                         "(harnet predict runs checkpoints and run folders)")
    return runtime


def open_runtime(path: str | Path, backend: Backend = "auto", threads: int | None = None,
                 spin: bool = False) -> Runtime:
    """A runtime for the model at ``path``: ``auto`` picks the one :func:`deploy_runtime` names (OpenVINO
    for IR, ``.xml`` or its folder; onnxruntime for ``.onnx``, its threads sleeping between runs unless
    ``spin``: see :class:`OnnxRuntime`)."""
    runtime = deploy_runtime(path)
    file = model_file(path)
    if backend == "auto":
        backend = runtime
    if backend == "openvino":
        return OpenVinoRuntime(file, threads)
    if runtime == "openvino":
        raise ValueError(f"{file}: an OpenVINO IR runs with --backend openvino, not onnxruntime")
    return OnnxRuntime(file, threads, spin)
