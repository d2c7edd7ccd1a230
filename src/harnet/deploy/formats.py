"""The export formats, in one table: what ``harnet export --format``, ``harnet bench RUN --formats`` and
``export_model`` accept, what each writes, and which runtime runs it.

The table is plain data (no torch, no runtime imported), so that the command line builds its choices from
it, the exporter and the benchmark branch on its columns instead of on format names, and a device without
torch can tell from a path which runtime to open (:func:`runtime_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["fp32", "fp16", "int8"]
Container = Literal["onnx", "openvino", "torchscript"]
RuntimeName = Literal["onnxruntime", "openvino", "torch"]
# Whether the aligned attention's deformable conv is written as GridSample + MatMul: a choice (--portable),
# forced (a runtime without DeformConv), or not available.
Portable = Literal["optional", "always", "never"]

PORTABLE_TAG = ".portable"  # inserted before the suffix of a portable export's default file name
CHECKPOINT = "torch"  # harnet bench's name for the checkpoint itself, run by PyTorch (not an export)
CHECKPOINT_SUFFIXES = (".pt", ".pth")


@dataclass(frozen=True)
class ExportFormat:
    """One exportable kind of model file."""

    name: str  # harnet export --format, harnet bench --formats
    container: Container  # what the exporter writes (and the metadata's "format")
    precision: Precision
    file_name: str  # the default output beside the checkpoint: a file, or a folder when ``folder``
    runtime: RuntimeName  # what runs it
    portable: Portable
    folder: bool = False  # the output is a folder holding ``model_name``
    model_name: str = ""  # the model file inside the folder
    help: str = ""

    def default_name(self, portable: bool = False) -> str:
        """The default output name: ``model.int8.portable.onnx`` for a portable int8 export."""
        if portable and self.portable == "optional":
            path = Path(self.file_name)
            return f"{path.stem}{PORTABLE_TAG}{path.suffix}"
        return self.file_name

    def model_file(self, out: str | Path) -> Path:
        """The model file of an export written to ``out`` (the ``.xml`` inside an OpenVINO folder)."""
        return Path(out) / self.model_name if self.folder else Path(out)

    def is_portable(self, requested: bool) -> bool:
        """Whether the export's deformable conv is portable when ``--portable`` is ``requested``."""
        if self.portable == "never" and requested:
            raise ValueError(f"--format {self.name} has no portable variant (--portable is for "
                             f"{', '.join(f.name for f in EXPORT_FORMATS.values() if f.portable == 'optional')})")
        return self.portable == "always" or requested

    @property
    def suffix(self) -> str:
        """The model file's suffix, which :func:`runtime_for` reads back."""
        return Path(self.model_name if self.folder else self.file_name).suffix


EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("onnx", "onnx", "fp32", "model.onnx", "onnxruntime", "optional",
                 help="ONNX, fp32, with the DeformConv op unless --portable"),
    ExportFormat("onnx-fp16", "onnx", "fp16", "model.fp16.onnx", "onnxruntime", "optional",
                 help="ONNX with fp16 weights and activations, fp32 inputs/outputs (also: --fp16)"),
    ExportFormat("onnx-int8", "onnx", "int8", "model.int8.onnx", "onnxruntime", "optional",
                 help="ONNX, static int8 QDQ, calibrated on --calib images (also: --int8)"),
    ExportFormat("openvino", "openvino", "fp32", "openvino", "openvino", "always", folder=True,
                 model_name="model.xml", help="OpenVINO IR folder (model.xml + model.bin), fp32, portable"),
    ExportFormat("torchscript", "torchscript", "fp32", "model.torchscript.pt", "torch", "never",
                 help="torch.jit.trace of the network (load after import torchvision)"),
)}

# The runtimes harnet.deploy opens (the others need torch).
DEPLOY_RUNTIMES: tuple[RuntimeName, ...] = ("onnxruntime", "openvino")
# harnet bench RUN measures the checkpoint and the exports harnet.deploy runs (onnxruntime, OpenVINO).
BENCH_FORMATS: tuple[str, ...] = (CHECKPOINT, *(f.name for f in EXPORT_FORMATS.values()
                                                        if f.runtime in DEPLOY_RUNTIMES))
DEFAULT_BENCH_FORMATS: tuple[str, ...] = (CHECKPOINT, "onnx", "onnx-int8", "openvino")


def export_format(name: str, precision: str | None = None) -> ExportFormat:
    """The row for ``--format name`` with ``precision`` (``--int8``/``--fp16``; None: the row's own), e.g.
    ``("onnx", "int8")`` -> ``onnx-int8``. A combination the table lacks is a ``ValueError`` naming the
    formats that have it."""
    base = EXPORT_FORMATS.get(name)
    if base is None:
        raise ValueError(f"unknown export format {name!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if precision is None or precision == base.precision:
        return base
    if base.precision != "fp32":
        raise ValueError(f"--format {name} is {base.precision} already; --{precision} does not combine with it")
    for row in EXPORT_FORMATS.values():
        if row.container == base.container and row.precision == precision:
            return row
    having = sorted({f.container for f in EXPORT_FORMATS.values() if f.precision == precision})
    if not having:
        raise ValueError(f"unknown precision {precision!r}; choose from "
                         f"{', '.join(sorted({f.precision for f in EXPORT_FORMATS.values()}))}")
    raise ValueError(f"--{precision} needs --format {' or '.join(having)} (--format {name} has no {precision})")


def parse_bench_formats(text: str) -> list[str]:
    """``"torch,onnx-int8"`` -> ``["torch", "onnx-int8"]``; an unknown or repeated name is a ``ValueError``."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in BENCH_FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown formats {unknown or [text]}; choose from {', '.join(BENCH_FORMATS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a format named twice in {text!r}")
    return names


def model_file(path: str | Path) -> Path:
    """The model file of ``path``: the file itself, or the one ``.xml`` of an OpenVINO IR folder."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) != 1:
            raise FileNotFoundError(f"{path}: expected one OpenVINO .xml model in the folder, found {len(xmls)}")
        return xmls[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    return path


def runtime_for(path: str | Path) -> RuntimeName:
    """Which runtime runs the model at ``path``: ``.onnx`` -> onnxruntime; an OpenVINO ``.xml`` or a folder
    holding one -> openvino; a checkpoint or TorchScript ``.pt``, or a run folder (no ``.xml``) -> torch.

    Decided from names alone (the file is not opened): a missing path is a ``FileNotFoundError``, an
    unknown suffix or a folder with several ``.xml`` a ``ValueError``, each naming ``path``."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob("*.xml"))
        if len(xmls) > 1:
            raise ValueError(f"{path}: {len(xmls)} OpenVINO .xml models in the folder; name the one to run")
        return "openvino" if xmls else "torch"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found")
    by_suffix: dict[str, RuntimeName] = {s: "torch" for s in CHECKPOINT_SUFFIXES}
    by_suffix |= {f.suffix: f.runtime for f in EXPORT_FORMATS.values()}
    runtime = by_suffix.get(path.suffix.lower())
    if runtime is None:
        raise ValueError(f"{path}: not a model file harnet runs (expected {', '.join(sorted(by_suffix))}, "
                         "an OpenVINO folder or a run folder)")
    return runtime
