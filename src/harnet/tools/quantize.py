"""Reduced-precision ONNX exports: int8 (ONNX Runtime's static quantization) and fp16.

int8 is ``onnxruntime.quantization.quantize_static`` in QDQ form with per-channel weights,
calibrated on the user's own images preprocessed exactly as at test time (the caller,
:func:`harnet.tools.export.export_model`, hands over the network inputs, so this module needs neither
torch nor the exporter: the dependency runs one way). Three things make the
difference between a graph that works and one that does not:

- *Shape arithmetic stays in float.* The graph computes sizes from ``Shape`` (the FPN's upsampling,
  the head's reshapes; EfficientNet-Lite's "same" padding did too before it became constant) through
  float ``Div``/``Ceil``/``Mul`` nodes. Quantizing those rounded a pad of 2 px to 1 px, so a 320 px
  batch lost feature-map rows and the outputs held the wrong number of anchors (12,216 instead of
  12,804). Every node whose inputs all derive from ``Shape`` or constants is excluded
  (:func:`shape_nodes`), which keeps any batch and image size.
- *Folding first.* ``quant_pre_process`` runs onnxruntime's graph optimiser, which folds the frozen
  batch norms (``Mul`` + ``Add`` after each conv) into the convs; unfolded, each conv would be
  followed by two quantize/dequantize pairs and int8 would be slower than fp32.
- *U8 activations, S8 weights*: the combination x86 CPUs run fastest (VNNI / the u8s8 GEMM).

Parts may stay in float (``nodes_to_exclude``): by default only the deformable conv (onnxruntime has
no int8 ``DeformConv``); ``predictors`` also keeps the last convs (the logits and box deltas
themselves) in float, which costs more time than it saves AP (docs/RESULTS.md, "int8"). The export
metadata records what was kept in float and how it was calibrated.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Node groups that may stay in float in an int8 export, by name or op type.
FLOAT_PARTS = {
    "predictors": lambda node: node.op_type == "Conv" and "/predictor/" in node.name,
    "deform": lambda node: node.op_type == "DeformConv",
}
DEFAULT_FLOAT_PARTS = ("deform",)


def check_float_parts(float_parts: Sequence[str]) -> None:
    """A ``ValueError`` for names that are not in :data:`FLOAT_PARTS`."""
    unknown = sorted(set(float_parts) - set(FLOAT_PARTS))
    if unknown:
        raise ValueError(f"unknown float parts {unknown}; choose from {sorted(FLOAT_PARTS)}")


def shape_nodes(model: Any) -> list[str]:
    """Names of the nodes that compute shapes: ``Shape`` and every node whose non-initializer inputs all
    come from shape nodes or ``Constant`` s. Quantizing them corrupts padding and resize sizes."""
    initializers = {i.name for i in model.graph.initializer}
    shape_tensors: set[str] = set()
    names = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        inputs = [i for i in node.input if i and i not in initializers]
        if node.op_type == "Constant":
            shape_tensors.update(node.output)
        elif node.op_type == "Shape" or (inputs and all(i in shape_tensors for i in inputs)):
            shape_tensors.update(node.output)
            names.append(node.name)
    return names


class _Calibration:
    """``CalibrationDataReader`` over network inputs (one preprocessed image each, as ``harnet predict``
    runs them), fed to the model's input ``name``."""

    def __init__(self, batches: Sequence[np.ndarray], name: str) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = ({name: batch} for batch in batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(fp32: Path, out: Path, calibration: Sequence[np.ndarray],
                  float_parts: Sequence[str] = DEFAULT_FLOAT_PARTS, method: str = "minmax") -> dict[str, Any]:
    """Write the int8 (QDQ, per-channel) version of the fp32 ONNX model ``fp32`` to ``out``; returns
    what the metadata records about it. ``calibration``: network inputs, float32 ``(1, 3, H, W)`` each,
    preprocessed as at test time."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ValueError("int8 export needs calibration images (--calib)")
    check_float_parts(float_parts)
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
        model = onnx.load(str(folded))
        shapes = shape_nodes(model)
        kept_float = [n.name for n in model.graph.node if any(FLOAT_PARTS[p](n) for p in float_parts)]
        initializers = {i.name for i in model.graph.initializer}
        reader = _Calibration(calibration, next(i.name for i in model.graph.input if i.name not in initializers))
        quantize_static(str(folded), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,  # type: ignore[arg-type]
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=shapes + kept_float, calibrate_method=methods[method],
                        extra_options={"CalibMovingAverage": False})
    return {"precision": "int8", "quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "per_channel": True, "activations": "uint8", "weights": "int8", "calibration_images": len(calibration),
            "calibration_method": method, "float_parts": list(float_parts), "float_nodes": kept_float,
            "shape_nodes_in_float": len(shapes)}


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """Write an fp16 version of ``fp32`` (inputs and outputs stay float32; ``DeformConv``, which
    onnxruntime runs in float32 only, stays float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=["DeformConv"])
    onnx.save(model, str(out))
    return {"precision": "fp16", "converter": "onnxruntime.transformers.float16", "float32_ops": ["DeformConv"]}
