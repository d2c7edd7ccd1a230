"""Export the network to ONNX, OpenVINO or TorchScript, with the metadata its prediction pipeline needs.

What is exported is the network only: a normalised, zero-padded batch ``(N, C, H, W)`` (any N, H, W; C the
model's input channels, 3 for RGB) -> ``cls_logits`` ``(N, A, K)`` and ``box_deltas`` ``(N, A, 4)``, the
hybrid's two prediction sets already averaged, exactly what :meth:`HARNet.forward` decodes. Every attention is
inside, the aligned attention's deformable conv included (ONNX ``DeformConv``, opset 19; onnxruntime >= 1.25
runs it on the CPU). Resizing, anchors, top-k, Soft-NMS and box voting stay outside: they are data-dependent
loops that exporters handle badly, and :class:`harnet.deploy.predictor.Predictor` runs them, the same code for
every backend (``harnet predict model.onnx ...``). A JSON document holds everything it needs (class names,
transform, anchors, inference settings), written into the model file itself (ONNX ``metadata_props``, OpenVINO
``rt_info``, TorchScript extra files; :mod:`harnet.deploy.metadata` reads it) and, for older readers, beside
it as ``<model>.json``, so a deployer needs only the exported model and ``harnet``.
"""

from __future__ import annotations

import copy
import inspect
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from harnet.config.model import HARNetConfig, to_dict
from harnet.deploy.formats import ExportFormat, Precision, export_format
from harnet.deploy.metadata import METADATA_KEY, TORCHSCRIPT_EXTRA, ExportInfo, load_export_info, metadata_path
from harnet.deploy.preprocess import preprocess
from harnet.modeling.attention.deform_portable import make_portable
from harnet.modeling.backbone.efficientnet import FixedSamePadConv2d
from harnet.modeling.harnet import HARNet, merge_prediction_sets
from harnet.modeling.pyramid import LEVEL_STRIDES
from harnet.tools.quantize import DEFAULT_FLOAT_PARTS, check_float_parts, convert_fp16, quantize_int8

ONNX_OPSET = 19  # the first opset with DeformConv
INPUT_NAMES = ["images"]
OUTPUT_NAMES = ["cls_logits", "box_deltas"]
Exporter = Literal["torchscript", "dynamo"]


class RawNetwork(nn.Module):
    """``HARNet.forward_raw`` with the test-time merge of prediction sets: the exported graph."""

    def __init__(self, model: HARNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return merge_prediction_sets(self.model.forward_raw(images))


# --- exporters ---------------------------------------------------------------------------------


def _deform_conv_symbolic() -> Any:
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` for the TorchScript-based exporter
    (torchvision registers no symbolic for it). Offsets share torchvision's layout: per offset group,
    per kernel tap, (dy, dx)."""
    from torch.onnx import symbolic_helper as sh

    @sh.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,  # type: ignore[no-untyped-def]
                      dilation_h, dilation_w, groups, offset_groups, use_mask):
        inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op("DeformConv", *inputs, strides_i=[stride_h, stride_w], pads_i=[pad_h, pad_w, pad_h, pad_w],
                    dilations_i=[dilation_h, dilation_w], group_i=groups, offset_group_i=offset_groups)

    return deform_conv2d


def _deform_conv_onnxscript() -> Any:
    """The same mapping for the dynamo (torch.export) exporter, written in onnxscript. The aligned
    attention's DeformConv2d is v1 (no modulation mask), so ``mask`` is not passed on."""
    from onnxscript import opset19 as op

    def deform_conv2d(input, weight, offset, mask, bias, stride_h: int, stride_w: int, pad_h: int,  # type: ignore[no-untyped-def]
                      pad_w: int, dilation_h: int, dilation_w: int, groups: int, offset_groups: int,
                      use_mask: bool):
        return op.DeformConv(input, weight, offset, bias, strides=[stride_h, stride_w],
                             pads=[pad_h, pad_w, pad_h, pad_w], dilations=[dilation_h, dilation_w],
                             group=groups, offset_group=offset_groups)

    return deform_conv2d


def _example_input(config: HARNetConfig, size: tuple[int, int] | None, extra: int = 0) -> Tensor:
    d = config.transform.size_divisible
    if size is None:
        side = -(-config.transform.test_sizes[0] // d) * d
        size = (side, side)
    h, w = (-(-s // d) * d for s in size)
    g = torch.Generator().manual_seed(0)
    return torch.randn(1 + extra, config.input.channels, h + extra * d, w + 2 * extra * d, generator=g)


def export_onnx(model: HARNet, path: Path, exporter: Exporter = "torchscript",
                size: tuple[int, int] | None = None, portable: bool = False) -> None:
    """Write ``model`` as ONNX (opset 19) with dynamic batch, height and width. ``portable``: the
    deformable conv as ``GridSample`` + ``MatMul`` instead of ``DeformConv``, for runtimes without it."""
    if portable:
        model = make_portable(copy.deepcopy(model))  # type: ignore[assignment]
    try:
        import onnx  # noqa: F401  (both exporters need it)
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'harnet[export]'") from None
    net = RawNetwork(model).eval()
    example = _example_input(model.config, size)
    params = inspect.signature(torch.onnx.export).parameters
    if exporter == "dynamo":
        if "custom_translation_table" not in params:
            raise RuntimeError(f"--exporter dynamo needs torch >= 2.6 (this is {torch.__version__}); "
                               "use --exporter torchscript")
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise RuntimeError("--exporter dynamo needs onnxscript: pip install 'harnet[export]'") from None
        # torch.export specialises dimensions of size 1: trace with a batch of 2 and sizes where
        # even P7 (stride 128) has two cells.
        d = model.config.transform.size_divisible
        side = max(example.shape[-1], example.shape[-2], -(-129 // d) * d)
        example = torch.randn(2, model.config.input.channels, side, side, generator=torch.Generator().manual_seed(0))
        dims = {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=32, max=8192),
                3: torch.export.Dim("width", min=32, max=8192)}
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=ONNX_OPSET, input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES, dynamic_shapes=(dims,),
            custom_translation_table={torch.ops.torchvision.deform_conv2d.default: _deform_conv_onnxscript()},
        )
        assert program is not None  # dynamo=True always returns the program
        program.save(str(path))
        return
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv_symbolic(), ONNX_OPSET)
    kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in params else {}
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}
    dynamic |= {name: {0: "batch", 1: "anchors"} for name in OUTPUT_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(net, (example,), str(path), opset_version=ONNX_OPSET, input_names=INPUT_NAMES,
                          output_names=OUTPUT_NAMES, dynamic_axes=dynamic, **kwargs)


def export_torchscript(model: HARNet, path: Path, size: tuple[int, int] | None = None,
                       extra_files: dict[str, str] | None = None) -> None:
    """Trace the network and save it. Shapes stay dynamic: the tracer records size arithmetic, it
    does not freeze it (``export_model`` checks the saved file on a differently shaped batch). Load
    with ``torch.jit.load`` after ``import torchvision`` (which registers ``deform_conv2d``)."""
    net = RawNetwork(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints, jit deprecation notices
        traced = torch.jit.trace(net, _example_input(model.config, size), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files=extra_files or {})


# --- metadata ----------------------------------------------------------------------------------


def metadata(model: HARNet, class_names: Sequence[str], category_ids: Sequence[int], fmt: ExportFormat,
             exporter: str, portable: bool = False, precision: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything :func:`preprocess` / :func:`postprocess_raw` need, as plain JSON."""
    t = model.config.transform
    short, long = t.test_sizes
    return {
        "format": fmt.container,
        "export_format": fmt.name,
        "exporter": exporter,
        "opset": ONNX_OPSET if fmt.container != "torchscript" else None,
        "deform_conv": "GridSample + MatMul (portable)" if portable else "DeformConv",
        "precision": precision or {"precision": "fp32"},
        "torch": torch.__version__,
        "inputs": {"images": f"float32 (N, {model.config.input.channels}, H, W): {_input_text(model.config)}, "
                             f"resized so the short side is {short} and the long side at most {long}, normalised "
                             f"(x - {list(t.image_mean)}) / {list(t.image_std)} (nodata pixels: 0), zero-padded "
                             f"bottom/right to a multiple of {t.size_divisible}"},
        "outputs": {"cls_logits": "float32 (N, A, num_classes) logits (sigmoid -> scores)",
                    "box_deltas": "float32 (N, A, 4) (dx, dy, dw, dh) against the anchors, weights 1"},
        "anchor_order": "levels P3..P7 (strides 8..128); within a level row-major (y, x), then the "
                        "level's anchors ratio-major, scale-minor",
        "level_strides": list(LEVEL_STRIDES),
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        "model": to_dict(model.config),
    }


def _input_text(config: HARNetConfig) -> str:
    """What the input channels hold, for the metadata's description (``model.input`` has the details)."""
    i = config.input
    if i.is_rgb:
        return "RGB in [0, 1]"
    bands = f"image bands {', '.join(map(str, i.bands))}" if i.bands else f"the image's {i.channels} bands"
    units = "divided by 255" if i.dtype == "uint8" else "raw values"
    return f"{bands} ({i.dtype}, {units})"


# An export's metadata, read back (the same reader harnet predict uses for an export, which needs no torch).
ExportedModel = ExportInfo
load_metadata = load_export_info


# --- one call ----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path  # the model file (``model.xml`` inside an OpenVINO folder); the metadata is inside it too
    metadata_path: Path  # the same metadata beside it, for readers from before it was embedded
    max_abs_diff: float | None  # exported vs PyTorch outputs on a check batch; None if not checked


def export_model(model: HARNet, path: str | Path, fmt: str, class_names: Sequence[str],
                 category_ids: Sequence[int], exporter: Exporter = "torchscript",
                 size: tuple[int, int] | None = None, verify: bool = True, portable: bool = False,
                 precision: Precision | None = None, calibration: Sequence[Tensor] = (),
                 float_parts: Sequence[str] | None = None) -> ExportResult:
    """Export ``model`` (moved to the CPU) to ``path``, its metadata embedded and in ``<model>.json``; by
    default run the export on a differently sized batch and report its largest difference from PyTorch.

    ``fmt``: a row of :data:`harnet.deploy.formats.EXPORT_FORMATS` (``onnx``, ``onnx-int8``, ``openvino``
    ...); ``precision`` picks the row of that container (``"onnx"`` + ``"int8"`` is ``onnx-int8``).
    ``openvino``: ``path`` is a folder that receives ``model.xml`` + ``model.bin`` (converted by OpenVINO
    from the portable ONNX graph). ``int8`` quantizes statically on ``calibration`` images
    (:mod:`harnet.tools.quantize`), ``fp16`` converts the weights."""
    spec = export_format(fmt, precision)
    model = model.cpu().eval()
    divisible = model.config.transform.size_divisible
    if divisible % 32 and any(isinstance(m, FixedSamePadConv2d) for m in model.modules()):
        raise ValueError(f"transform.size_divisible is {divisible}: exporting an EfficientNet-Lite body needs a "
                         "multiple of 32 (its stride-2 convs are exported with the padding of even sizes)")
    portable = spec.is_portable(portable)
    parts = DEFAULT_FLOAT_PARTS if float_parts is None else tuple(float_parts)
    if spec.precision == "int8":  # before the minutes of exporting, not after
        if not calibration:
            raise ValueError("int8 export needs calibration images (--calib)")
        check_float_parts(parts)
    if spec.folder:
        Path(path).mkdir(parents=True, exist_ok=True)
    path = spec.model_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter_name = "torch.jit.trace" if spec.container == "torchscript" else exporter
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = path if spec.container == "onnx" and spec.precision == "fp32" else Path(tmp) / "fp32.onnx"
        info: dict[str, Any] | None = None
        ir: Any = None  # the OpenVINO model, saved once its metadata is known
        if spec.container != "torchscript":
            export_onnx(model, fp32, exporter, size, portable)
        if spec.precision == "int8":
            batches = [preprocess([image.numpy()], model.config.transform).images for image in calibration]
            info = quantize_int8(fp32, path, batches, parts)
        elif spec.precision == "fp16":
            info = convert_fp16(fp32, path)
        if spec.container == "openvino":
            ir, info = _convert_openvino(fp32)
        text = json.dumps(metadata(model, class_names, category_ids, spec, exporter_name, portable, info), indent=1)
        if spec.container == "torchscript":
            export_torchscript(model, path, size, extra_files={TORCHSCRIPT_EXTRA: text})
        elif spec.container == "openvino":
            _save_openvino(ir, path, text)
        else:
            _embed_onnx_metadata(path, text)
    metadata_path(path).write_text(text + "\n")
    diff = _verify(model, path, spec) if verify else None
    return ExportResult(path, metadata_path(path), diff)


def _embed_onnx_metadata(path: Path, text: str) -> None:
    """``text`` as the ONNX model's ``metadata_props[harnet]`` (what :mod:`harnet.deploy.metadata` reads)."""
    import onnx

    model = onnx.load(str(path))
    for entry in [e for e in model.metadata_props if e.key == METADATA_KEY]:
        model.metadata_props.remove(entry)
    model.metadata_props.add(key=METADATA_KEY, value=text)
    onnx.save(model, str(path))


def _convert_openvino(onnx_path: Path) -> tuple[Any, dict[str, Any]]:
    """OpenVINO's own converter on the portable ONNX graph -> an in-memory model (weights kept in fp32)
    and what the metadata records about it."""
    try:
        import openvino as ov
    except ImportError:
        raise RuntimeError("OpenVINO export needs openvino: pip install 'harnet[edge]'") from None
    info = {"precision": "fp32", "converter": f"openvino.convert_model {ov.__version__}"}
    return ov.convert_model(str(onnx_path)), info


def _save_openvino(ir: Any, xml: Path, text: str) -> None:
    """The IR as ``xml`` + ``.bin``, ``text`` in its ``rt_info[harnet]``."""
    import openvino as ov

    ir.set_rt_info(text, [METADATA_KEY])
    ov.save_model(ir, str(xml), compress_to_fp16=False)


@torch.no_grad()
def _verify(model: HARNet, path: Path, spec: ExportFormat) -> float | None:
    """Largest |exported - PyTorch| over both outputs on a batch unlike the export example."""
    example = _example_input(model.config, None, extra=1)
    expected = RawNetwork(model).eval()(example)
    if spec.runtime == "torch":
        # Without the profiling executor's optimisation passes, which take seconds on a first call.
        with warnings.catch_warnings(), torch.jit.optimized_execution(False):
            warnings.simplefilter("ignore")
            got = [t.numpy() for t in torch.jit.load(str(path))(example)]
    elif spec.runtime == "openvino":
        try:
            import openvino as ov
        except ImportError:
            return None
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled([example.numpy()])
        got = [result[compiled.output(name)] for name in OUTPUT_NAMES]
    else:
        try:
            import onnxruntime as ort
        except ImportError:
            return None  # exporting does not need onnxruntime; checking does
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {INPUT_NAMES[0]: example.numpy()})
    return max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected))
