"""The two inference runtimes a device may have, behind one call: ``run(images) -> (logits, deltas)``.

ONNX Runtime runs ``.onnx`` files (fp32, fp16 or int8 QDQ); OpenVINO runs its IR (``.xml`` + ``.bin``)
and, being able to read ONNX too, a portable ``.onnx`` (one without ``DeformConv``). Both are
imported only when asked for, so a device needs just the one it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from harnet.deploy.metadata import model_file

Backend = Literal["auto", "onnxruntime", "openvino"]


class Runtime(Protocol):
    name: str

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class OnnxRuntime:
    """An onnxruntime CPU session; ``threads`` sets its intra-op thread pool (None: onnxruntime's default).

    ``spin=False`` lets the pool's threads sleep as soon as a run ends. onnxruntime's default keeps them
    spinning for a while, the fastest for one stream of runs, but several sessions (or torch) timed in
    turn in one process then steal each other's cores; benchmarks that interleave turn it off."""

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, deltas = self.session.run(["cls_logits", "box_deltas"], {self.input_name: images})
        return np.asarray(logits, dtype=np.float32), np.asarray(deltas, dtype=np.float32)


class OpenVinoRuntime:
    """An OpenVINO model compiled for the CPU; ``threads`` sets ``INFERENCE_NUM_THREADS``. Inference runs
    in f32: on CPUs with bf16 units OpenVINO otherwise picks bf16, which moves logits by ~1e-2."""

    name = "openvino"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({0: images})
        by_name = {next(iter(k.get_names())): v for k, v in result.items()}
        return (np.asarray(by_name["cls_logits"], dtype=np.float32),
                np.asarray(by_name["box_deltas"], dtype=np.float32))


def open_runtime(path: str | Path, backend: Backend = "auto", threads: int | None = None) -> Runtime:
    """A runtime for the model at ``path``: ``auto`` picks OpenVINO for IR (``.xml`` or its folder),
    onnxruntime for ``.onnx``."""
    file = model_file(path)
    if backend == "auto":
        backend = "openvino" if file.suffix == ".xml" else "onnxruntime"
    if backend == "openvino":
        return OpenVinoRuntime(file, threads)
    if file.suffix == ".xml":
        raise ValueError(f"{file}: an OpenVINO IR runs with --backend openvino, not onnxruntime")
    return OnnxRuntime(file, threads)
