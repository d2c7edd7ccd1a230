"""``harnet predict MODEL ...``: which backend runs a model file, and the pipeline around it.

Like ultralytics' ``AutoBackend``, the model file decides: an exported ``.onnx`` (fp32, fp16, int8) runs in
onnxruntime, an OpenVINO IR (``.xml`` or its folder) in OpenVINO, a checkpoint (``.pt`` or a run folder) in
PyTorch. All three feed one :class:`~harnet.deploy.predictor.Predictor`, so every input kind and output
works with every model kind, and an exported model runs where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

from harnet.deploy.draw import CLASS_COLORS as CLASS_COLORS
from harnet.deploy.draw import draw_detections as draw_detections
from harnet.deploy.files import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from harnet.deploy.files import expand_inputs as expand_inputs
from harnet.deploy.formats import CHECKPOINT, runtime_for
from harnet.deploy.predict_files import predict_files as predict_files
from harnet.deploy.predictor import Predictor
from harnet.deploy.runtime import Backend
from harnet.deploy.tta import TTAConfig
from harnet.utils.errors import UsageError


def open_predictor(model: str | Path, *, backend: Backend | str = "auto", threads: int | None = None,
                   device: str = "auto", batch_size: int = 4, tta: TTAConfig | None = None) -> Predictor:
    """The pipeline for ``model``: an export through :meth:`Predictor.from_export` (no torch), a checkpoint
    through :func:`harnet.engine.torch_runtime.load_predictor` (imports torch only then)."""
    if not Path(model).exists():
        kind = "model file" if Path(model).suffix.lower() in (".onnx", ".xml") else "checkpoint"
        raise UsageError(f"{model}: {kind} not found")
    if runtime_for(model) != CHECKPOINT:
        if backend == "torch":
            raise ValueError(f"{model}: an exported model runs with onnxruntime or openvino, not --backend torch")
        return Predictor.from_export(model, backend, threads, batch_size, tta)  # type: ignore[arg-type]
    if backend not in ("auto", "torch"):
        raise ValueError(f"{model}: a checkpoint runs with --backend torch; export it for {backend} "
                         "(harnet export)")
    from harnet.engine.torch_runtime import load_predictor

    if threads:
        import torch

        torch.set_num_threads(threads)
    return load_predictor(model, device=device, batch_size=batch_size, tta=tta)
